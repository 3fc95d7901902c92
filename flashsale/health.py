"""GET /healthz: is the database reachable, is Redis reachable."""

from flask import jsonify
from sqlalchemy import text

from .extensions import db, redis_store


def check():
    """{"database": "ok"|"down", "redis": "ok"|"down"}."""
    status = {}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
        status["database"] = "ok"
    except Exception:  # noqa: BLE001 - any failure to answer means down
        db.session.rollback()
        status["database"] = "down"
    try:
        redis_store.client.ping()
        status["redis"] = "ok"
    except Exception:  # noqa: BLE001
        status["redis"] = "down"
    return status


def healthz():
    """200 when both answer, else 503 naming what is down, with Retry-After."""
    status = check()
    healthy = all(v == "ok" for v in status.values())
    response = jsonify(status)
    response.status_code = 200 if healthy else 503
    if not healthy:
        response.headers["Retry-After"] = "1"
    return response


def init_app(app):
    """Register /healthz (exempt from rate limits)."""
    app.add_url_rule("/healthz", "healthz", healthz)
