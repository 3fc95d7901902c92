"""Rate limits on hold creation, per client address and per email, stored in Redis for every process.

If the limiter's Redis is down the request fails closed: the error reaches our handler and the client
gets 503 `unavailable` with Retry-After (a hold needs Redis anyway), never an unlimited free-for-all.
"""

from functools import lru_cache

from flask import current_app, request
from flask_limiter.util import get_remote_address
from limits import parse_many

from .extensions import limiter, limiter_storage_uri


def init_app(app):
    """Point the limiter at REDIS_URL; limits are declared on the routes with the helpers below."""
    app.config.setdefault("RATELIMIT_STORAGE_URI", limiter_storage_uri(app.config["REDIS_URL"]))
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS", {
        "socket_timeout": app.config["REDIS_SOCKET_TIMEOUT"],
        "socket_connect_timeout": app.config["REDIS_SOCKET_TIMEOUT"],
    })
    app.config.setdefault("RATELIMIT_KEY_PREFIX", "fs:ratelimit")
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", False)
    limiter.init_app(app)


def hold_limit_per_address():
    """The per-address limit string (configurable, read per request so tests can change it)."""
    return current_app.config["RATELIMIT_HOLD_PER_ADDRESS"]


def hold_limit_per_email():
    """The per-email limit string."""
    return current_app.config["RATELIMIT_HOLD_PER_EMAIL"]


def email_key():
    """Rate-limit key for the buyer's email, from the JSON body or the form (address if absent)."""
    email = None
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # silent= covers ValueError only; the view answers 422 for this body
            body = None
        if isinstance(body, dict) and isinstance(body.get("email"), str):
            email = body["email"]
    else:
        email = request.form.get("email")
    return email_limit_key(email, get_remote_address())


def email_limit_key(email, address):
    """The per-email limit's key for a raw email as sent (the address's when there is none)."""
    if not email:
        return "address:" + address
    return "email:" + email.strip().lower()[:254]


def hold_limits(func):
    """Decorate a hold-creating view with both limits (the order is the evaluation order's tie-break,
    which hold_limit_keys mirrors)."""
    func = limiter.limit(hold_limit_per_email, key_func=email_key)(func)
    return limiter.limit(hold_limit_per_address)(func)


def hold_limit_keys(config, endpoint, email, address):
    """[(RateLimitItem, storage key)] of a hold request's limits, in the order Flask-Limiter checks them.

    For the sold-out gate, which counts the same limits in the same Redis keys without Flask: the
    decorators' limits in the order they were declared (per email, then per address), stably sorted by
    window as Flask-Limiter does, each keyed [key prefix, limit key, endpoint] by limits' key_for.
    """
    by_kind = {"email": email_limit_key(email, address), "address": address}
    return [(item, head + by_kind[kind] + tail) for item, kind, head, tail in _key_templates(
        config["RATELIMIT_HOLD_PER_EMAIL"], config["RATELIMIT_HOLD_PER_ADDRESS"],
        config["RATELIMIT_KEY_PREFIX"], endpoint, limiter.storage.prefixed_key(""))]


@lru_cache(maxsize=32)
def _key_templates(per_email, per_address, prefix, endpoint, storage_prefix):
    """(item, kind, head, tail) per limit: its storage key is head + the limit key + tail."""
    declared = [(item, "email") for item in parse_many(per_email)]
    declared += [(item, "address") for item in parse_many(per_address)]
    marker = "\x00"  # stands for the limit key while key_for builds the rest of the key
    templates = []
    for item, kind in sorted(declared, key=lambda pair: pair[0]):
        head, tail = (storage_prefix + item.key_for(prefix, marker, endpoint)).split(marker)
        templates.append((item, kind, head, tail))
    return tuple(templates)
