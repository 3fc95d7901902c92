"""WEBHOOK_URLS and WEBHOOK_SECRET, checked when the app starts: a malformed one stops it, named."""

import base64
import binascii
from urllib.parse import urlsplit

SECRET_PREFIX = "whsec_"


class WebhookSettingsInvalid(RuntimeError):
    """WEBHOOK_URLS or WEBHOOK_SECRET cannot be used as they are."""


def endpoints(value):
    """The endpoints of a comma-separated WEBHOOK_URLS (each http or https, with a host), in order."""
    found = []
    for url in (part.strip() for part in (value or "").split(",")):
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
            raise WebhookSettingsInvalid(
                f"WEBHOOK_URLS: {url!r} is not an http(s) URL with a host (give comma-separated endpoints, "
                "e.g. https://shop.example/hooks/flashsale)")
        if url not in found:
            found.append(url)
    return tuple(found)


def secret_bytes(value):
    """The key of a Standard Webhooks secret, `whsec_` + base64 of at least 24 bytes."""
    if not value.startswith(SECRET_PREFIX):
        raise WebhookSettingsInvalid("WEBHOOK_SECRET must be a Standard Webhooks secret: whsec_ followed by "
                                     "base64 (e.g. whsec_ + `openssl rand -base64 32`)")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise WebhookSettingsInvalid("WEBHOOK_SECRET: the part after whsec_ is not valid base64") from None
    if len(key) < 24:
        raise WebhookSettingsInvalid(f"WEBHOOK_SECRET is too short: {len(key)} bytes, at least 24 "
                                     "(`openssl rand -base64 32` makes 32)")
    return key


def check_settings(config):
    """Parse WEBHOOK_URLS into config['WEBHOOK_ENDPOINTS']; refuse endpoints without a secret, or a
    secret or URL that is malformed, naming the setting."""
    urls = endpoints(config.get("WEBHOOK_URLS"))
    secret = config.get("WEBHOOK_SECRET")
    if secret:
        secret_bytes(secret)
    elif urls:
        raise WebhookSettingsInvalid("WEBHOOK_URLS is set but WEBHOOK_SECRET is not: every delivery is signed "
                                     "(whsec_ + base64; the shop verifies with the same secret)")
    config["WEBHOOK_ENDPOINTS"] = urls
