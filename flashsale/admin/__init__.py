"""The admins' read-only dashboard and the metrics it polls."""

from .routes import bp


def init_app(app):
    """Register the admin blueprint."""
    app.register_blueprint(bp)
