"""The JSON API (design section 7)."""

from .routes import bp


def init_app(app):
    """Register the API blueprint; it is exempt from CSRF (no cookies authorise it)."""
    from ..extensions import csrf

    csrf.exempt(bp)
    app.register_blueprint(bp)
