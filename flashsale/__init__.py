"""flashsale: a flash-sale engine that never sells a unit it does not have."""

from flask import Flask

from config import Config


def create_app(config_object=Config, **overrides):
    """Build the application: extensions, the request plumbing, blueprints, commands, then the gates."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    app.config.from_object(config_object)
    app.config.update(overrides)
    _check_secret_key(app)
    from .gateways.stripe_settings import check_settings

    check_settings(app.config)  # PAYMENT_GATEWAY=stripe without a key it needs: refuse, naming it
    from .worker import webhook_settings

    webhook_settings.check_settings(app.config)  # a malformed WEBHOOK_URLS or WEBHOOK_SECRET: refuse, naming it
    from . import admin, api, cli, database, gates, metrics, shop, web
    from .extensions import redis_store

    database.init_app(app)
    redis_store.init_app(app)
    web.init_app(app)
    for blueprint in (api, shop, admin):
        blueprint.init_app(app)
    cli.init_app(app)
    gates.install(app)
    metrics.batch_recordings(app.config["METRICS_BATCH_SECONDS"])  # per process: the last app's setting
    return app


def _check_secret_key(app):
    """Outside development and tests a real SECRET_KEY is required (it signs CSRF tokens)."""
    if app.config.get("SECRET_KEY"):
        return
    if app.config["ENV_NAME"] in ("development", "testing"):
        app.config["SECRET_KEY"] = "dev-only-not-secret"
        return
    raise RuntimeError("SECRET_KEY must be set outside development")
