"""The hold route's rate limits: per client address and per email, counted in Redis, one implementation.

`POST /api/products/<ref>/holds` is limited by RATELIMIT_HOLD_PER_ADDRESS and RATELIMIT_HOLD_PER_EMAIL
(e.g. "20/second;300/minute"). Each limit is a fixed window: a counter (keys.hold_limit) that the first
request of a window creates with the window as its TTL. The limits are counted in order of window,
shortest first, and counting stops at the first one over its amount, whose window's end the 429's
Retry-After names. The same Lua function (LIMIT_LUA) counts them wherever a request is answered:

- in front of Flask, inside the sold-out gate's one script (gates/sold_out.py), which then hands the
  request on to Flask with `environ[COUNTED]` set, so the view does not count it again;
- in Flask, by the `limited` decorator on the view, in LIMITS_SCRIPT (which also records a refusal in
  the metrics, in the same round trip).

Both produce a `Counted`; every answer of the route carries its headers (X-RateLimit-Limit,
X-RateLimit-Remaining, X-RateLimit-Reset, and on a 429 Retry-After: when that window ends). If Redis is down the request
fails closed: 503 with Retry-After, never unlimited.

The shop's forms and the waiting-room joins keep Flask-Limiter (web/ratelimits.py) with the same
settings; this module owns only the route the gate answers, so gate and view can never count apart.
"""

import time
from dataclasses import dataclass
from functools import lru_cache, wraps

from flask import current_app, request
from limits import parse_many

from .. import keys, lua, metrics
from ..errors import RateLimited

# Counts KEYS[first], KEYS[first + 1], ... (n counters, shortest window first) against the (amount,
# window seconds) pairs ARGV[arg], ARGV[arg + 1], ...: INCR each, creating it with its window's TTL,
# and stop at the first over its amount. Returns breached (bool), the index (0-based) of the limit the
# headers report (the breached one, else the first; -1 when n is 0), its count and its TTL.
LIMIT_LUA = """
local function count_limits(first, arg, n)
  local reported, count, breached = -1, 0, false
  for i = 0, n - 1 do
    local current = redis.call('INCR', KEYS[first + i])
    if current == 1 then redis.call('EXPIRE', KEYS[first + i], ARGV[arg + 2 * i + 1]) end
    if i == 0 then reported, count = 0, current end
    if current > tonumber(ARGV[arg + 2 * i]) then
      reported, count, breached = i, current, true
      break
    end
  end
  local ttl = 0
  if reported >= 0 then ttl = redis.call('TTL', KEYS[first + reported]) end
  return breached, reported, count, ttl
end
"""

# KEYS = metrics totals, bucket, started-at (metrics.recording_keys), then the limits' counters;
# ARGV = metrics.recording_args (bucket ttl, now, samples), then (amount, window) per counter.
# Returns {1 if breached else 0, reported index, its count, its TTL}; a breach is counted as a
# rate_limited outcome in the metrics.
LIMITS_SCRIPT = lua.Script(metrics.RECORD_LUA + LIMIT_LUA + """
local breached, reported, count, ttl = count_limits(4, 4, #KEYS - 3)
if breached then
  record(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], {'rate_limited', 1}, {}, tonumber(ARGV[3]))
end
return {breached and 1 or 0, reported, count, ttl}
""")

HOLD_ENDPOINT = "api.create_hold"  # the view this module's limits belong to
COUNTED = "flashsale.hold_limits_counted"  # the WSGI environ key of a request already counted
HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")


@dataclass(frozen=True)
class Limit:
    """One limit of the route: `amount` requests per `seconds` (its text as the 429 names it)."""

    amount: int
    seconds: int
    text: str


@dataclass(frozen=True)
class Counted:
    """What counting one request found: the limit its headers report (None: limits off), the count
    in that limit's window, the window's remaining TTL (s), and whether the request is over it."""

    limit: Limit | None
    count: int = 0
    ttl: int = 0
    breached: bool = False

    def refusal(self):
        """The 429 this count calls for, or None."""
        if not self.breached:
            return None
        return RateLimited(f"Too many requests ({self.limit.text}); slow down.")

    def headers(self, now=None):
        """[(name, value)] of the rate-limit headers (none when limits are off)."""
        if self.limit is None:
            return []
        now = time.time() if now is None else now
        reset_at = int(now + max(self.ttl, 0) + 1)
        pairs = [(HEADERS[0], str(self.limit.amount)),
                 (HEADERS[1], str(max(0, self.limit.amount - self.count))), (HEADERS[2], str(reset_at))]
        if self.breached:
            pairs.append((HEADERS[3], str(reset_at - int(now))))
        return pairs

    def headers_over(self, headers, now=None):
        """headers ([(name, value)]) with these rate-limit headers in place of any of the same name."""
        limit_headers = self.headers(now)
        replaced = {name for name, _ in limit_headers}
        return [*(h for h in headers if h[0] not in replaced), *limit_headers]


NOT_LIMITED = Counted(None)


def limits_and_keys(config, email, address):
    """[(Limit, counter key)] of a hold request, in counting order; [] when limits are off."""
    if not config.get("RATELIMIT_ENABLED", True):
        return []
    kinds = {"email": email_identity(email, address), "address": "address:" + address}
    return [(limit, keys.hold_limit(kinds[kind], limit.amount, limit.seconds))
            for limit, kind in _parsed(config["RATELIMIT_HOLD_PER_EMAIL"], config["RATELIMIT_HOLD_PER_ADDRESS"])]


def email_identity(email, address):
    """Whom the per-email limit counts: the email as sent, normalised, or the address without one."""
    if not isinstance(email, str) or not email.strip():
        return "address:" + address
    return "email:" + email.strip().lower()[:254]


@lru_cache(maxsize=16)
def _parsed(per_email, per_address):
    """((Limit, kind), ...) sorted by window, shortest first (stable: per email before per address)."""
    declared = [(item, "email") for item in parse_many(per_email)]
    declared += [(item, "address") for item in parse_many(per_address)]
    declared.sort(key=lambda pair: pair[0].get_expiry())
    return tuple((Limit(item.amount, item.get_expiry(), str(item)), kind) for item, kind in declared)


def script_arguments(limits):
    """The (amount, window) ARGV pairs of LIMIT_LUA for [(Limit, key)]."""
    return [x for limit, _ in limits for x in (limit.amount, limit.seconds)]


def counted_from_reply(limits, breached, reported, count, ttl):
    """A Counted from LIMIT_LUA's answer for these limits."""
    if reported < 0:
        return NOT_LIMITED
    return Counted(limits[reported][0], int(count), int(ttl), bool(breached))


def count(redis, config, email, address, now=None):
    """Count one hold request against its limits (one round trip); a Counted."""
    limits = limits_and_keys(config, email, address)
    if not limits:
        return NOT_LIMITED
    breached, reported, hits, ttl = LIMITS_SCRIPT(
        redis, [*metrics.recording_keys(now), *(key for _, key in limits)],
        [*metrics.recording_args(now), *script_arguments(limits)])
    return counted_from_reply(limits, breached, reported, hits, ttl)


def limited(view):
    """Decorate the hold view: count the request (unless the gate did) and refuse it with 429 when over."""

    @wraps(view)
    def checked(*args, **kwargs):
        counted = request.environ.get(COUNTED)
        if counted is None:
            from ..extensions import redis_store

            email = _email_in_body()
            counted = count(redis_store.client, current_app.config, email, request.remote_addr or "127.0.0.1")
            request.environ[COUNTED] = counted
        if (refusal := counted.refusal()) is not None:
            raise refusal
        return view(*args, **kwargs)

    return checked


def _email_in_body():
    """The email field of the request's JSON body, if it has one (the view judges the body itself)."""
    try:
        body = request.get_json(silent=True) if request.is_json else None
    except RecursionError:  # silent= covers ValueError only; the view answers 422 for this body
        return None
    return body.get("email") if isinstance(body, dict) else None


def add_headers(response):
    """After a counted request (whatever its answer): the rate-limit headers."""
    counted = request.environ.get(COUNTED)
    if counted is not None:
        for name, value in counted.headers():
            response.headers[name] = value
    return response


def init_app(app):
    """Add the headers to every answer of a counted request."""
    app.after_request(add_headers)
