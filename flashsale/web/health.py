"""GET /livez (is this process serving) for the load balancer, GET /healthz (are PostgreSQL and Redis up)."""

from flask import jsonify
from sqlalchemy import text

from ..extensions import db, redis_store


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


def livez():
    """200 while this process answers HTTP; touches neither Redis nor the database.

    The load balancer's check: a web server is taken out when it is dead, not when Redis or PostgreSQL
    is away. A check on /healthz would take every server out at once during a Redis failover, and the
    balancer would then answer 503 itself, without Retry-After; live servers answer 503 + Retry-After.
    """
    return {"status": "live"}


def init_app(app):
    """Register /livez and /healthz (exempt from rate limits)."""
    app.add_url_rule("/livez", "livez", livez)
    app.add_url_rule("/healthz", "healthz", healthz)
