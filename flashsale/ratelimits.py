"""Rate limits on hold creation, per client address and per email, stored in Redis for every process.

If the limiter's Redis is down the request fails closed: the error reaches our handler and the client
gets 503 `unavailable` with Retry-After (a hold needs Redis anyway), never an unlimited free-for-all.
"""

from flask import current_app, request
from flask_limiter.util import get_remote_address

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
    if not email:
        return "address:" + get_remote_address()
    return "email:" + email.strip().lower()[:254]


def hold_limits(func):
    """Decorate a hold-creating view with both limits."""
    func = limiter.limit(hold_limit_per_email, key_func=email_key)(func)
    return limiter.limit(hold_limit_per_address)(func)
