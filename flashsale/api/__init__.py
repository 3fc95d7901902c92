"""The JSON API (design section 7), and the endpoint Stripe posts its webhooks to (section 11)."""

from . import stripe_webhooks
from .routes import bp


def init_app(app):
    """Register the API and Stripe's webhook endpoint, exempt from CSRF: no cookie authorises them (the
    hold token in the URL does; Stripe's signature does)."""
    from ..extensions import csrf

    for blueprint in (bp, stripe_webhooks.bp):
        csrf.exempt(blueprint)
        app.register_blueprint(blueprint)
