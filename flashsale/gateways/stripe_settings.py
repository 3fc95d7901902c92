"""Stripe's settings, checked when the app starts, and the one page's CSP that lets Stripe.js in.

Kept apart from stripe_gateway.py so that an app on the fake gateway never imports the `stripe` library
(a second of start-up).
"""

from urllib.parse import urlsplit

REQUIRED = ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY", "STRIPE_WEBHOOK_SECRET")
GATEWAYS = ("fake", "stripe")
# Where Stripe.js opens its frames (card fields, 3-D Secure) and loads images, per Stripe's CSP guide.
STRIPE_FRAMES = ("https://js.stripe.com", "https://*.js.stripe.com", "https://hooks.stripe.com")
STRIPE_IMAGES = ("https://*.stripe.com",)


class SettingsMissing(RuntimeError):
    """An unknown PAYMENT_GATEWAY, or stripe without one of the keys it needs."""


def check_settings(config):
    """Refuse to start with an unknown gateway, or with Stripe and a missing key (named)."""
    name = config.get("PAYMENT_GATEWAY") or "fake"
    if name not in GATEWAYS:
        raise SettingsMissing(f"PAYMENT_GATEWAY={name!r} is not a gateway: use fake or stripe")
    if name != "stripe":
        return
    missing = [setting for setting in REQUIRED if not config.get(setting)]
    if missing:
        raise SettingsMissing(f"PAYMENT_GATEWAY=stripe needs {', '.join(missing)} (see docs/production.md)")


def is_stripe(config):
    """True when this app takes payments through Stripe."""
    return config.get("PAYMENT_GATEWAY") == "stripe"


def origin(url):
    """scheme://host[:port] of a URL (what a CSP source names)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def hold_page_csp(config):
    """The hold page's Content-Security-Policy with Stripe: the default one, plus STRIPE_JS_URL's origin
    for scripts, Stripe's frames, and the API Stripe.js talks to (STRIPE_API_BASE) for its requests."""
    script, api = origin(config["STRIPE_JS_URL"]), origin(config["STRIPE_API_BASE"])
    frames = " ".join(dict.fromkeys((script, *STRIPE_FRAMES)))
    return "; ".join([
        "default-src 'self'",
        f"script-src 'self' {script}",
        "style-src 'self'",
        f"img-src 'self' data: {' '.join(STRIPE_IMAGES)}",
        f"connect-src 'self' {' '.join(dict.fromkeys((api, script)))}",
        f"frame-src {frames}",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])
