"""Placing a hold in front of Flask: the hot path's request without Flask's request machinery.

The sold-out gate (sold_out.py) passes on a buyer it has looked at and found not sold out: a JSON body
of a valid email and quantity only, no Idempotency-Key, a product without a waiting room, inside its
window and per-customer limit, its rate limits counted. The view would place that request as it is, so
this gate places it by the view's own call (checkout.place_hold, in an app context, which also records
the outcome) and answers a created hold with the view's own answer: `hold_json` through the app's JSON
provider, 201, the headers the app's after-request hooks add (rendered once) and the request's rate-limit
headers. On the hot product that skips Flask's request context, routing and hooks: a fifth of a hold's
Python time.

Whatever else placing ends in (a refusal decided in the line, an outage, a bug) is handed to Flask with
the exception in `environ[OUTCOME]`, and the view raises it as if it had met it itself: refusals and
errors have one path, Flask's error handlers. tests/test_hold_gate.py sends the same buyers through this
gate and through Flask and compares every answer.
"""

from contextlib import nullcontext

from flask import current_app, has_app_context

from ..serialise import hold_json
from . import sold_out

OUTCOME = "flashsale.hold_outcome"  # the exception placing ended in, for the view to raise


class HoldGate:
    """WSGI middleware placing the holds the sold-out gate passed on (see the module docstring)."""

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self._headers = {}  # scheme -> the app's headers on a hold's answer, Content-Length aside

    def __call__(self, environ, start_response):
        request = environ.get(sold_out.HOLD_REQUEST)
        if request is None or not self.app.config.get("HOLD_GATE", True):
            return self.wsgi_app(environ, start_response)
        from .. import checkout
        from ..web import hold_limits

        with self._app_context():
            try:
                placed = checkout.place_hold(*request, sold_out_checked=True)
                body = self.app.json.response(hold_json(placed.hold)).get_data()
            except Exception as outcome:  # noqa: BLE001 - Flask answers it, exactly as the view would
                environ[OUTCOME] = outcome
                return self.wsgi_app(environ, start_response)
        headers = [*self._rendered(environ.get("wsgi.url_scheme", "http")), ("Content-Length", str(len(body)))]
        start_response("201 CREATED" if placed.created else "200 OK",
                       environ[hold_limits.COUNTED].headers_over(headers))
        return [body]

    def _app_context(self):
        """This app's context as Flask's request would have it: the one already pushed (a test's, whose
        session the request then shares, as SQLite's one writer needs), else a new one."""
        if has_app_context() and current_app._get_current_object() is self.app:
            return nullcontext()
        return self.app.app_context()

    def _rendered(self, scheme):
        """The headers the app puts on a hold's JSON answer (security hooks included), once per scheme."""
        if scheme not in self._headers:
            from ..web.security import rendered_with_hooks

            response = rendered_with_hooks(self.app, "/api/products/0/holds", "POST", scheme,
                                           lambda: self.app.json.response({}))
            self._headers[scheme] = [(k, v) for k, v in response.headers.items() if k != "Content-Length"]
        return self._headers[scheme]


def outcome(environ):
    """The exception the hold gate met placing this request, or None."""
    return environ.get(OUTCOME)
