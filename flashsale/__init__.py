"""flashsale: a flash-sale engine that never sells a unit it does not have."""

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Config


def create_app(config_object=Config, **overrides):
    """Build the application: extensions, blueprints, error handlers and CLI commands."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static",
                instance_relative_config=False)
    app.config.from_object(config_object)
    app.config.update(overrides)
    _check_secret_key(app)
    from . import poll_gate, soldout_gate

    # In front of Flask, behind ProxyFix (they need the client's address): the answers most of a
    # flash sale's requests get, without Flask.
    soldout_gate.install(app)
    poll_gate.install(app)
    if app.config["TRUSTED_PROXIES"]:
        # Believe X-Forwarded-For only for as many hops as we run proxies; a client cannot forge past them.
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    from . import admin, api, cli, database, handlers, health, ratelimits, security, shop

    database.init_app(app)
    ratelimits.init_app(app)
    security.init_app(app)
    for module in (handlers, health, api, shop, admin, cli):
        module.init_app(app)
    return app


def _check_secret_key(app):
    """Outside development and tests a real SECRET_KEY is required (it signs CSRF tokens)."""
    if app.config.get("SECRET_KEY"):
        return
    if app.config["ENV_NAME"] in ("development", "testing"):
        app.config["SECRET_KEY"] = "dev-only-not-secret"
        return
    raise RuntimeError("SECRET_KEY must be set outside development")
