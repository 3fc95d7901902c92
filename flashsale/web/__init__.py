"""What every request through Flask passes: request ids and logs, security headers and CSRF, rate limits,
error pages, health."""

from . import handlers, health, logs, ratelimits, security


def init_app(app):
    """Install the request plumbing the blueprints rely on."""
    for module in (logs, security, ratelimits, handlers, health):
        module.init_app(app)
