"""The shoppers' server-rendered pages."""

from .routes import bp


def init_app(app):
    """Register the shop blueprint."""
    app.register_blueprint(bp)
