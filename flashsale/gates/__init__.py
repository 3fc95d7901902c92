"""The WSGI layers in front of Flask, installed in one place and in one order.

A request meets, from the outside in: ProxyFix (the client's address from X-Forwarded-For, for as
many hops as TRUSTED_PROXIES), the request id (web/logs.py: X-Request-Id on every answer), the poll
gate (watchers' polls from the stock snapshot), the sold-out gate (a sold-out buyer's 409, or a 429,
in one Redis round trip), the hold gate (the buyers the sold-out gate passed on, placed by the view's
own call), then Flask. Each gate answers only what it can answer exactly as Flask would, and hands
everything else on untouched (the hold gate: with the exception it met, for the view to raise).
"""

from werkzeug.middleware.proxy_fix import ProxyFix

from ..web import logs
from . import holds, polls, sold_out


def install(app):
    """Wrap app.wsgi_app in the gates and, when the app runs behind proxies, ProxyFix outermost."""
    app.wsgi_app = holds.HoldGate(app, app.wsgi_app)
    app.wsgi_app = sold_out.SoldOutGate(app, app.wsgi_app)
    app.wsgi_app = polls.PollGate(app, app.wsgi_app)
    logs.wrap(app)  # outside the gates, so their answers carry X-Request-Id too
    if hops := app.config["TRUSTED_PROXIES"]:
        # Believe X-Forwarded-For only for as many hops as we run proxies; a client cannot forge past them.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
