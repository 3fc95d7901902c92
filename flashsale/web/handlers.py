"""Turning failures into answers: contract JSON for the API, readable pages for people, never a trace."""

import logging

from flask import current_app, jsonify, render_template, request
from flask_limiter.errors import RateLimitExceeded
from limits.errors import StorageError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from .. import metrics
from ..errors import FlashsaleError, RateLimited, Unavailable
from ..extensions import db, redis_store

log = logging.getLogger(__name__)
JSON_PREFIXES = ("/api/", "/healthz", "/livez", "/admin/metrics")
HTTP_CODES = {404: "not_found", 429: "rate_limited", 503: "unavailable"}


def init_app(app):
    """Register one handler per kind of failure."""
    app.register_error_handler(FlashsaleError, on_domain_error)
    app.register_error_handler(RateLimitExceeded, on_rate_limited)
    for outage in (RedisError, StorageError, OperationalError, DBAPIError):
        app.register_error_handler(outage, on_outage)
    app.register_error_handler(HTTPException, on_http_error)
    app.register_error_handler(Exception, on_unexpected)


def wants_json():
    """True for API paths, and for clients that ask for JSON rather than HTML."""
    if request.path.startswith(JSON_PREFIXES):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def error_response(error):
    """The answer for a FlashsaleError: JSON `{"error": {...}}` or an error page, same status."""
    body = {"code": error.code, "message": error.message}
    if getattr(error, "fields", None):
        body["fields"] = error.fields
    if wants_json():
        response = jsonify(error=body)
        response.status_code = error.status
    else:
        response = current_app.make_response(
            (render_template("error.html", error=body, status=error.status), error.status))
    if error.status in (429, 503):
        response.headers["Retry-After"] = str(
            getattr(error, "retry_after", None) or current_app.config["RETRY_AFTER_SECONDS"])
    return response


def on_domain_error(error):
    return error_response(error)


def on_rate_limited(error):
    # The limiter refuses before the view runs, so the refusal is counted here (only hold routes are limited).
    metrics.record_outcome(redis_store.client, "rate_limited")
    limited = RateLimited(f"Too many requests ({error.description}); slow down.")
    response = error_response(limited)
    # Flask-Limiter adds Retry-After for the window that was hit when headers are enabled.
    return response


def on_outage(error):
    """Redis or PostgreSQL is unreachable: roll back whatever was half-done and ask to retry."""
    if isinstance(error, DBAPIError) and not (
        isinstance(error, (OperationalError, InterfaceError)) or error.connection_invalidated
    ):
        return on_unexpected(error)  # a constraint or SQL error is a bug, not an outage
    db.session.rollback()
    log.warning("outage answering %s %s: %s", request.method, request.path,
                error.__class__.__name__)
    return error_response(Unavailable())


def on_http_error(error):
    status = error.code or 500
    failure = FlashsaleError(error.description if status != 404 else "Not found.")
    failure.status = status
    failure.code = HTTP_CODES.get(status, "invalid" if 400 <= status < 500 else "internal")
    response = error_response(failure)
    if getattr(error, "valid_methods", None):  # 405 must say which methods are allowed
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def on_unexpected(error):
    db.session.rollback()
    log.exception("unexpected error on %s %s", request.method, request.path)
    failure = FlashsaleError("Something went wrong on our side; nothing was changed.")
    failure.status, failure.code = 500, "internal"
    return error_response(failure)
