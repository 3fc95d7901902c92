"""Flask-Limiter's limits on the shop's buy and join forms and the API's queue join, per address and email.

The same settings as the API's hold route (RATELIMIT_HOLD_PER_ADDRESS, RATELIMIT_HOLD_PER_EMAIL), whose
own counter the sold-out gate shares lives in hold_limits.py. If the limiter's Redis is down the
request fails closed: the error reaches our handler and the client gets 503 `unavailable` with
Retry-After, never an unlimited free-for-all.
"""

from flask import current_app, request
from flask_limiter.util import get_remote_address

from ..extensions import limiter
from . import hold_limits


def init_app(app):
    """Point the limiter at the app's Redis; limits are declared on the routes with `per_customer`."""
    # The limiter counts on the app client's own pool (RedisStore.connect): the same primary, found
    # through the sentinels when they are configured, and never a replica's stale count. A storage URI
    # given in the config names its own server (the limiter keeps options across apps: say None).
    pool = None
    if "RATELIMIT_STORAGE_URI" not in app.config:
        app.config["RATELIMIT_STORAGE_URI"] = "redis://"
        pool = app.extensions["flashsale_redis"][0].connection_pool
    app.config["RATELIMIT_STORAGE_OPTIONS"] = {
        **app.config.get("RATELIMIT_STORAGE_OPTIONS", {}), "connection_pool": pool}
    app.config.setdefault("RATELIMIT_KEY_PREFIX", "fs:ratelimit")
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", False)
    limiter.init_app(app)
    hold_limits.init_app(app)


@limiter.request_filter
def _counted_by_hold_limits():
    """Flask-Limiter has no limit on the API's hold route (hold_limits.py counts it): without this it
    still resolved the route's limits on every hold, 5 % of a hold's Python time on the hot product."""
    return request.endpoint == hold_limits.HOLD_ENDPOINT


def per_address():
    """The per-address limit string (read per request, so tests can change it)."""
    return current_app.config["RATELIMIT_HOLD_PER_ADDRESS"]


def per_email():
    """The per-email limit string."""
    return current_app.config["RATELIMIT_HOLD_PER_EMAIL"]


def email_key():
    """Whom the per-email limit counts: the email in the JSON body or the form (the address if none)."""
    email = None
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # silent= covers ValueError only; the view answers 422 for this body
            body = None
        if isinstance(body, dict):
            email = body.get("email")
    else:
        email = request.form.get("email")
    return hold_limits.email_identity(email, get_remote_address())


def per_customer(func):
    """Decorate a form or queue view with both limits."""
    func = limiter.limit(per_email, key_func=email_key)(func)
    return limiter.limit(per_address)(func)
