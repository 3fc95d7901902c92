"""The sold-out answer at Redis speed: one round trip, no Flask, no database, no session.

In a flash sale almost every buyer hears "sold out". Through Flask that answer costs the request
context, Flask-Limiter's four counters and its header reads (six round trips), the sold-out probe and
the refusal's metrics: eight Redis round trips and about 1.5 ms of Python per refusal. The gate is a
WSGI layer in front of Flask (inside ProxyFix, so it sees the client's real address) that answers
`POST /api/products/<ref>/holds` itself when, and only when, Flask would answer 409 `sold_out`:

- the request is one the view would get as far as the sold-out check: a JSON object with only `email`
  and `quantity`, both valid, no Idempotency-Key (a key may name a hold made before the sale sold out:
  only the database can replay it), a product this process read less than two seconds ago (or
  three, while one buyer has Flask read it again: catalog.cached_sale_info), without a waiting room,
  inside its sale window by this process's clock, within its per-customer limit;
- then one Lua script (GATE_SCRIPT) does, atomically, what the refusal needs: it counts the hold
  route's rate limits exactly as Flask-Limiter would (the same fixed-window counters under the same
  keys, in the same order, stopping at the first breach) and reads the product's sold-out mark. Over a
  limit, or marked, it records the outcome in the metrics (metrics.RECORD_LUA) and the gate answers
  429 or 409. Not marked, the request goes on to Flask with its limits counted: Flask-Limiter skips it
  (a request filter), limit_headers adds the same headers, and the view skips its own sold-out probe.

The answers themselves (status, JSON body, security headers) are rendered once by the app's own error
handler and after-request hooks (handlers.error_response, security.add_security_headers), and the
rate-limit headers are computed as Flask-Limiter computes them. tests/test_soldout_gate.py runs the same
requests through the gate and through Flask and compares every answer, header and counter.

Whatever the gate cannot answer exactly (anything else, a Redis error, a configuration of Flask-Limiter
it does not mirror) it hands to Flask untouched, body included. Flask-Limiter stays the declared limit
mechanism: its decorators on the route, its storage, its keys, its 429 and its headers.
"""

import io
import json
import re
import threading
import time
from datetime import datetime, timezone
from functools import lru_cache

from flask_limiter.constants import ConfigVars, HeaderNames
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisError

from . import keys, metrics
from .errors import InvalidInput, RateLimited, SoldOut
from .extensions import limiter
from .inventory import catalog
from .inventory.validation import validate_hold_request
from .ratelimits import hold_limit_keys

HOLD_PATH = re.compile(r"/api/products/([^/]+)/holds")
ENDPOINT = "api.create_hold"  # the view whose answers the gate gives; its limits are scoped by it
HOLD_FIELDS = {"email", "quantity"}

NOT_MARKED, SOLD_OUT, RATE_LIMITED = 0, 1, 2
# Set in the WSGI environ of a request the gate passed on after counting its limits (and finding no
# sold-out mark): (the limit its headers report, or None; its count; its TTL).
COUNTED = "flashsale.limits_counted"
FIRST_LIMIT_KEY = 6  # KEYS[1..5] below; the limits' counters follow

# KEYS = sold-out mark, metrics totals, bucket, started-at, latency ring, limit counters...;
# ARGV = bucket ttl, now, samples, latency ms, then (amount, window seconds) per limit counter.
# Counts the limits (whatever the mark says) and returns {answer, index of the limit the headers
# report (-1: none), its count, its TTL}; the refusal's metrics are recorded, a NOT_MARKED request's
# outcome is Flask's to record.
GATE_SCRIPT = metrics.RECORD_LUA + """
local marked = redis.call('EXISTS', KEYS[1]) == 1
local header, count, answer = -1, 0, 1
if not marked then answer = 0 end
for i = 6, #KEYS do
  local j = 5 + 2 * (i - 6)
  -- limits' incr_expire.lua, as Flask-Limiter's fixed window runs it
  local current = redis.call('INCRBY', KEYS[i], 1)
  if current == 1 then redis.call('EXPIRE', KEYS[i], ARGV[j + 1]) end
  if i == 6 then header, count = 0, current end
  if current > tonumber(ARGV[j]) then
    header, count, answer = i - 6, current, 2
    break  -- Flask-Limiter stops at the first breach (RATELIMIT_FAIL_ON_FIRST_BREACH)
  end
end
local ttl = 0
if header >= 0 then ttl = redis.call('TTL', KEYS[6 + header]) end
if answer == 2 then
  record(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], {'rate_limited', 1}, {}, tonumber(ARGV[3]))
elseif answer == 1 then
  record(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], {'sold_out', 1}, {KEYS[5], ARGV[4]},
         tonumber(ARGV[3]))
end
return {answer, header, count, ttl}
"""
_gate = Script(None, GATE_SCRIPT.encode())


class _ThreadConnection(threading.local):
    """Each request thread's own connection for the gate's script, made with the app client's settings.

    Through redis-py's client a call also pays the pool's checkout and check-in, its retry wrapper and
    its argument plumbing, about half of the gate's Python time; a thread's own connection sends the
    one command and reads the one reply.
    """

    connection = None

    def run(self, client, keys_, args):
        """EVALSHA the gate's script on this thread's connection (loading it if Redis has not seen it)."""
        if self.connection is None:
            pool = client.connection_pool
            self.connection = pool.connection_class(**pool.connection_kwargs)
        connection = self.connection
        try:
            try:
                connection.send_command("EVALSHA", _gate.sha, len(keys_), *keys_, *args)
                return connection.read_response()
            except NoScriptError:
                connection.send_command("SCRIPT", "LOAD", _gate.script)
                connection.read_response()
                connection.send_command("EVALSHA", _gate.sha, len(keys_), *keys_, *args)
                return connection.read_response()
        except (RedisError, OSError):
            connection.disconnect()  # reconnects on the next request
            raise


_connection = _ThreadConnection()

# Flask-Limiter settings whose behaviour the script mirrors; anything else and Flask answers.
MIRRORED = {
    ConfigVars.STRATEGY: (None, "fixed-window"),
    ConfigVars.FAIL_ON_FIRST_BREACH: (None, True),
    ConfigVars.HEADER_RETRY_AFTER_VALUE: (None, "delta-seconds"),
    ConfigVars.IN_MEMORY_FALLBACK_ENABLED: (None, False),
    ConfigVars.APPLICATION_LIMITS: (None, ""),
    ConfigVars.DEFAULT_LIMITS: (None, ""),
    ConfigVars.META_LIMITS: (None, ""),
}


class SoldOutGate:
    """WSGI middleware answering sold-out hold requests before Flask (see the module docstring)."""

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self._answers = {}  # (status kind, detail, scheme) -> (status line, static headers, body)

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
        email = _sold_out_candidate(body, sale, config["MAX_QUANTITY"])
        if email is None:
            return None
        limits = self._limits(config, email, environ.get("REMOTE_ADDR") or "127.0.0.1")
        if limits is None:
            return None
        now = time.time()
        client = self.app.extensions["flashsale_redis"][0]
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        try:
            reply = _connection.run(
                client, [keys.sold_out(sale.id), *metrics.recording_keys(now), keys.metrics("latency"),
                         *(key for _, key in limits)],
                [*metrics.recording_args(now), latency_ms,
                 *(x for item, _ in limits for x in (item.amount, item.get_expiry()))])
        except (RedisError, OSError):
            return None  # Flask meets the same outage and answers 503 with Retry-After
        answer, header, count, ttl = (int(x) for x in reply)
        item = limits[header][0] if header >= 0 else None
        if answer == NOT_MARKED:
            # Flask places the hold: its limits are counted already (Flask-Limiter is told to skip
            # this request, limit_headers adds the same headers) and the mark was not set just now.
            environ[COUNTED] = (item, count, ttl)
            return None
        status, headers, payload = self._rendered(answer, item, environ.get("wsgi.url_scheme", "http"))
        if item is not None and config.get(ConfigVars.HEADERS_ENABLED):
            headers = _with_limit_headers(headers, config, item, count, ttl)
        return status, headers, payload

    def _limits(self, config, email, address):
        """The route's limits and their keys, [] when limits are off, None when the gate cannot mirror."""
        if not config.get(ConfigVars.ENABLED, True):
            return []
        for name, allowed in MIRRORED.items():
            if config.get(name) not in allowed:
                return None
        return hold_limit_keys(config, ENDPOINT, email, address)

    def _rendered(self, answer, item, scheme):
        """The app's own answer for a sold-out (or rate-limited) buyer, rendered once per kind."""
        cache_key = (answer, str(item) if answer == RATE_LIMITED else None, scheme)
        if cache_key not in self._answers:
            from .handlers import error_response
            from .security import rendered_with_hooks

            refusal = SoldOut() if answer == SOLD_OUT else RateLimited(
                f"Too many requests ({item}); slow down.")  # as handlers.on_rate_limited words it
            response = rendered_with_hooks(self.app, "/api/products/0/holds", "POST", scheme,
                                           lambda: error_response(refusal))
            self._answers[cache_key] = (response.status, list(response.headers.items()),
                                        response.get_data())
        return self._answers[cache_key]


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
    """The raw email if the view would reach its sold-out check with this body, else None."""
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
    now = datetime.now(timezone.utc)
    if not sale.sale_starts_at <= now < sale.sale_ends_at or quantity > sale.max_per_customer:
        return None  # the view answers sale_not_open or limit_exceeded before looking at stock
    return email


def _with_limit_headers(headers, config, item, count, ttl):
    """Flask-Limiter's headers for the limit it would report (Limiter.__inject_headers)."""
    now = time.time()
    reset_at = int(max(ttl, 0) + now + 1)
    limit, remaining, reset, retry_after = _header_names(*(config.get(var) for var in HEADER_SETTINGS))
    retry_at = reset_at
    for name, value in headers:
        if name == "Retry-After":  # the app's own Retry-After (a 429's): the later of the two wins
            retry_at = max(int(now + int(value)), reset_at)
    return [*(pair for pair in headers if pair[0] != retry_after),
            (limit, str(item.amount)), (remaining, str(max(0, item.amount - count))),
            (reset, str(reset_at)), (retry_after, str(int(retry_at - now)))]


HEADER_SETTINGS = (ConfigVars.HEADER_LIMIT, ConfigVars.HEADER_REMAINING, ConfigVars.HEADER_RESET,
                   ConfigVars.HEADER_RETRY_AFTER)


@lru_cache(maxsize=8)
def _header_names(*configured):
    """The rate-limit header names: configured, or Flask-Limiter's defaults."""
    defaults = (HeaderNames.LIMIT, HeaderNames.REMAINING, HeaderNames.RESET, HeaderNames.RETRY_AFTER)
    return tuple(name or default.value for name, default in zip(configured, defaults, strict=True))


def counted(environ):
    """True when the gate counted this request's limits (and found the product not marked sold out)."""
    return COUNTED in environ


def limit_headers(response):
    """After a request the gate counted: the rate-limit headers Flask-Limiter would have added."""
    from flask import current_app, request

    passed = request.environ.get(COUNTED)
    if passed is None or passed[0] is None or not current_app.config.get(ConfigVars.HEADERS_ENABLED):
        return response
    headers = _with_limit_headers(list(response.headers.items()), current_app.config, *passed)
    response.headers.clear()
    response.headers.extend(headers)
    return response


def install(app):
    """Put the gate in front of the app's WSGI callable (call before ProxyFix wraps it), and tell
    Flask-Limiter not to count again what the gate counted (the gate's count gets the same headers)."""
    app.wsgi_app = SoldOutGate(app, app.wsgi_app)
    if _counted_by_the_gate not in limiter._request_filters:  # one filter for every app of the process
        limiter.request_filter(_counted_by_the_gate)
    app.after_request(limit_headers)


def _counted_by_the_gate():
    from flask import request

    return counted(request.environ)
