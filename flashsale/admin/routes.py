"""GET /admin/metrics: one JSON snapshot of what the sale is doing, for the dashboard's 5 s poll."""

import hmac

from flask import Blueprint, abort, current_app, jsonify, request

from .. import metrics
from ..extensions import db, redis_store
from ..inventory.stock import stock_levels
from ..models import Product

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def require_admin_token():
    """With ADMIN_TOKEN set, every admin URL needs it (header, bearer or ?token=); compared in constant time."""
    expected = current_app.config["ADMIN_TOKEN"]
    if not expected:
        return
    given = request.headers.get("X-Admin-Token") or request.args.get("token") or ""
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        given = auth[len("Bearer "):]
    if not hmac.compare_digest(given.encode(), expected.encode()):
        abort(404)


@bp.get("/metrics")
def metrics_json():
    """Counters, series and latency from Redis, plus stock per product from the database."""
    snapshot = metrics.snapshot(redis_store.client)
    levels = stock_levels(db.session)
    products = db.session.query(Product).order_by(Product.id).all()
    snapshot["products"] = [
        {"id": p.id, "slug": p.slug, "name": p.name, "total": levels[p.id].total,
         "available": levels[p.id].available, "held": levels[p.id].held,
         "confirmed": levels[p.id].confirmed}
        for p in products
    ]
    snapshot["queue"] = queue_stats()
    return jsonify(snapshot)


def queue_stats():
    """RQ queue depth, scheduled jobs, failed jobs and live workers."""
    from rq import Worker

    queue = redis_store.queue
    return {
        "depth": queue.count,
        "scheduled": queue.scheduled_job_registry.count,
        "failed": queue.failed_job_registry.count,
        "workers": Worker.count(queue=queue),
    }
