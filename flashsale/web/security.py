"""Browser-facing protections: security headers on every answer, and emails masked in every log line.

CSP allows scripts only from our own origin (no inline script, no eval), so an injected `<script>` in a
product name or a flash message cannot run. Frames are denied (clickjacking on the "hold" button), MIME
sniffing is off, and referrers never carry a hold's URL (its token) to another site.
"""

import logging

from flask import current_app, request
from flask.sessions import SecureCookieSessionInterface

from ..extensions import csrf
from ..serialise import mask_emails

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def init_app(app):
    """CSRF on the shop's forms, the security headers on every response, and emails masked in this
    process's log records.

    CONTENT_SECURITY_POLICY may be set in the config to adjust the policy (say, for a CDN).
    """
    app.config.setdefault("CONTENT_SECURITY_POLICY", CONTENT_SECURITY_POLICY)
    csrf.init_app(app)
    app.session_interface = PageSessions()
    app.after_request(add_security_headers)
    install_email_masking()


class PageSessions(SecureCookieSessionInterface):
    """Signed-cookie sessions (CSRF tokens, flash messages) for the shop's pages only: the JSON API is
    stateless, so its requests neither read a session cookie nor build its signing serializer."""

    def open_session(self, app, request):
        if request.path.startswith("/api/"):
            return self.make_null_session(app)
        return super().open_session(app, request)


def add_security_headers(response):
    """Set the headers a browser enforces; hold and ticket answers (they carry tokens) are never cached."""
    response.headers.setdefault("Content-Security-Policy",
                                current_app.config["CONTENT_SECURITY_POLICY"])
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.method != "GET" or "/holds" in request.path or "/queue" in request.path:
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def rendered_with_hooks(app, path, method, scheme, make_response):
    """make_response() as the app answers `method path`, with the security headers added: for the
    gates in front of Flask, which render each kind of answer once and send its bytes many times."""
    base = "https://localhost" if scheme == "https" else "http://localhost"
    with app.test_request_context(path, method=method, base_url=base):
        return add_security_headers(make_response())


def install_email_masking():
    """Wrap the log record factory (once per process) so messages and tracebacks carry no full email.

    A record factory, unlike a handler filter, also covers handlers added later (gunicorn's, RQ's).
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "masks_emails", False):
        return

    def masked_record(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem to report, not ours
            return record
        if "@" in message:
            record.msg, record.args = mask_emails(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = mask_emails(logging.Formatter().formatException(record.exc_info))
        return record

    masked_record.masks_emails = True
    logging.setLogRecordFactory(masked_record)
