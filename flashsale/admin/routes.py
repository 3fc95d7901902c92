"""The admins' read-only dashboard (GET /admin/) and the JSON snapshot it polls (GET /admin/metrics)."""

import hmac

from flask import Blueprint, abort, current_app, jsonify, render_template, request

from . import board

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


@bp.get("/")
def dashboard():
    """The read-only dashboard: rendered with the current numbers, then kept fresh by a 5 s poll."""
    return render_template("admin/dashboard.html", board=board.snapshot(),
                           poll_seconds=current_app.config.get("ADMIN_POLL_SECONDS", 5))


@bp.get("/metrics")
def metrics_json():
    """Counters, series and latency from Redis, stock and outcomes per product from the database."""
    return jsonify(board.snapshot())
