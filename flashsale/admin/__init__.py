"""The admins' read-only dashboard, the metrics it polls, and Prometheus's GET /metrics."""

from . import prometheus
from .routes import bp


def init_app(app):
    """Register the admin blueprint and the Prometheus endpoint (guarded alike)."""
    app.register_blueprint(bp)
    app.register_blueprint(prometheus.bp)
