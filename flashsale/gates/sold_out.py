"""The sold-out answer at Redis speed: one round trip, no Flask, no database, no session.

In a flash sale almost every buyer hears "sold out". Through Flask that answer costs the request
context, the rate-limit count, the sold-out probe and the refusal's metrics: several Redis round trips
and about 1.5 ms of Python per refusal. The gate is a WSGI layer in front of Flask (inside ProxyFix, so
it sees the client's real address) that answers `POST /api/products/<ref>/holds` itself when, and only
when, Flask would answer 409 `sold_out` or 429 `rate_limited`:

- the request is one the view would get as far as the sold-out check: a JSON object with only `email`
  and `quantity`, both valid, no Idempotency-Key (a key may name a hold made before the sale sold out:
  only the database can replay it), a product this process read less than two seconds ago (or
  three, while one buyer has Flask read it again: catalog.cached_sale_info), without a waiting room,
  inside its sale window by the database clock as this process estimates it, within its per-customer limit;
- then one Lua script (GATE_SCRIPT) does, atomically, what the refusal needs: it counts the route's
  rate limits with the route's own function (web/hold_limits.py's LIMIT_LUA, which the view runs
  too) and reads the product's sold-out mark. Over a limit, or marked, it records the outcome in the
  metrics (metrics.RECORD_LUA) and the gate answers 429 or 409. Not marked, the request goes on with
  its count in `environ` (the view does not count it again), marked as probed (the view skips its own
  sold-out probe) and with its email and quantity, for the hold gate (holds.py) to place it.

The answers themselves (status, JSON body, security headers) are rendered once by the app's own error
handler and after-request hooks (handlers.error_response, security.add_security_headers); the
rate-limit headers come from the same `Counted` the view's answers use. tests/test_soldout_gate.py runs
the same requests through the gate and through Flask and compares every answer, header and counter.
Whatever the gate cannot answer exactly (anything else, a Redis error) it hands to Flask untouched,
body included.
"""

import io
import json
import re
import threading
import time
from datetime import datetime, timezone

from redis.exceptions import RedisError

from .. import keys, lua, metrics
from ..errors import InvalidInput, SoldOut
from ..inventory import catalog, clock
from ..inventory.validation import validate_hold_request
from ..web import hold_limits

HOLD_PATH = re.compile(r"/api/products/([^/]+)/holds")
HOLD_FIELDS = {"email", "quantity"}
# (ref, email, quantity) of a request passed on with the mark not set, that the view would place as it
# is (gates/holds.py); its presence also says the mark was probed
HOLD_REQUEST = "flashsale.hold_request"

NOT_MARKED, SOLD_OUT, RATE_LIMITED = 0, 1, 2

# KEYS = sold-out mark, metrics totals, bucket, started-at, latency ring, then the limits' counters
# (hold_limits.limits_and_keys); ARGV = bucket ttl, now, samples (metrics.recording_args), latency ms,
# then (amount, window seconds) per counter. Counts the limits (whatever the mark says) and returns
# {answer (NOT_MARKED, SOLD_OUT or RATE_LIMITED), breached, index of the limit the headers report,
# its count, its TTL}; a refusal's metrics are recorded, a NOT_MARKED request's outcome is Flask's.
GATE_SCRIPT = lua.Script(metrics.RECORD_LUA + hold_limits.LIMIT_LUA + """
local breached, reported, count, ttl = count_limits(6, 5, #KEYS - 5)
local answer = 0
if breached then
  answer = 2
  record(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], {'rate_limited', 1}, {}, tonumber(ARGV[3]))
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  answer = 1
  record(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], {'sold_out', 1}, {KEYS[5], ARGV[4]},
         tonumber(ARGV[3]))
end
return {answer, breached and 1 or 0, reported, count, ttl}
""")


class _ThreadConnection(threading.local):
    """Each request thread's own connection from the app client's pool, kept for the gate's script.

    Through redis-py's client a call also pays the pool's checkout and check-in, its retry wrapper and
    its argument plumbing, about half of the gate's Python time; a thread's own connection sends the
    one command and reads the one reply.
    """

    connection = None
    pool = None

    def run(self, client, keys_, args):
        """Run the gate's script on this thread's connection."""
        if self.connection is None or self.pool is not client.connection_pool:
            if self.connection is not None:
                self.pool.release(self.connection)  # another app's pool (tests build several apps)
            # The pool's checkout calls connect(): through Sentinel that asks for the current primary.
            self.pool = client.connection_pool
            self.connection = self.pool.get_connection()
        try:
            return GATE_SCRIPT.on_connection(self.connection, keys_, args)
        except (RedisError, OSError):
            # Handed back closed, not kept: a bare connection that reconnects by itself dials the address
            # it last had (the old primary after a failover); the pool's next checkout resolves it again.
            self.connection.disconnect()
            self.pool.release(self.connection)
            self.connection = None
            raise


_connection = _ThreadConnection()


class SoldOutGate:
    """WSGI middleware answering sold-out hold requests before Flask (see the module docstring)."""

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self._answers = {}  # (answer, limit text, scheme) -> (status line, static headers, body)

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "POST" and (match := HOLD_PATH.fullmatch(
                environ.get("PATH_INFO", ""))):
            answer = self._answer(environ, match.group(1), time.perf_counter())
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                return [body]
        return self.wsgi_app(environ, start_response)

    def _answer(self, environ, ref, started):
        """(status, headers, body) for a sold-out or rate-limited buyer, or None to let Flask answer."""
        config = self.app.config
        if not config.get("SOLD_OUT_GATE", True) or environ.get("HTTP_IDEMPOTENCY_KEY") is not None:
            return None
        sale = catalog.cached_sale_info(ref)
        if sale is None or sale.waiting_room or not _json(environ.get("CONTENT_TYPE", "")):
            return None
        body = _read_body(environ, config["MAX_CONTENT_LENGTH"])
        if body is None:
            return None
        candidate = _sold_out_candidate(body, sale, config["MAX_QUANTITY"])
        if candidate is None:
            return None
        email, quantity = candidate
        limits = hold_limits.limits_and_keys(config, email, environ.get("REMOTE_ADDR") or "127.0.0.1")
        now = time.time()
        client = self.app.extensions["flashsale_redis"][0]
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        try:
            answer, *counted = _connection.run(
                client, [keys.sold_out(sale.id), *metrics.recording_keys(now), keys.metrics("latency"),
                         *(key for _, key in limits)],
                [*metrics.recording_args(now), latency_ms, *hold_limits.script_arguments(limits)])
        except (RedisError, OSError):
            return None  # Flask meets the same outage and answers 503 with Retry-After
        counted = hold_limits.counted_from_reply(limits, *counted)
        if answer == NOT_MARKED:
            # Flask places the hold: its limits are counted already and the mark was not set just now.
            environ[hold_limits.COUNTED] = counted
            environ[HOLD_REQUEST] = (ref, email, quantity)
            return None
        status, headers, payload = self._rendered(answer, counted, environ.get("wsgi.url_scheme", "http"))
        return status, counted.headers_over(headers, now), payload

    def _rendered(self, answer, counted, scheme):
        """The app's own answer for a sold-out (or rate-limited) buyer, rendered once per kind."""
        cache_key = (answer, counted.limit.text if answer == RATE_LIMITED else None, scheme)
        if cache_key not in self._answers:
            from ..web.handlers import error_response
            from ..web.security import rendered_with_hooks

            refusal = SoldOut() if answer == SOLD_OUT else counted.refusal()
            response = rendered_with_hooks(self.app, "/api/products/0/holds", "POST", scheme,
                                           lambda: error_response(refusal))
            self._answers[cache_key] = (response.status, list(response.headers.items()),
                                        response.get_data())
        return self._answers[cache_key]


def probed(environ):
    """True when the gate looked at this request's product's sold-out mark and found it not set."""
    return HOLD_REQUEST in environ


def _json(content_type):
    """As request.is_json: application/json or application/*+json."""
    mimetype = content_type.split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/")
                                              and mimetype.endswith("+json"))


def _read_body(environ, max_length):
    """The request body, put back for Flask to read again; None if it has no usable Content-Length."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        return None
    if length <= 0 or length > max_length:
        return None
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)  # if Flask answers after all, it reads the same bytes
    return body


def _sold_out_candidate(body, sale, max_quantity):
    """(raw email, quantity) if the view would reach its sold-out check with this body, else None."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or set(data) - HOLD_FIELDS:
        return None
    email, quantity = data.get("email"), data.get("quantity", 1)
    try:
        validate_hold_request(email, quantity, max_quantity)
    except InvalidInput:
        return None
    now = datetime.fromtimestamp(clock.estimated_shared_time(), timezone.utc)
    if not sale.sale_starts_at <= now < sale.sale_ends_at or quantity > sale.max_per_customer:
        return None  # the view answers sale_not_open or limit_exceeded before looking at stock
    return email, quantity
