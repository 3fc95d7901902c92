"""Watchers' polls answered in front of Flask: a dictionary lookup or one Redis read, and the bytes.

Thousands of product pages poll `GET /products/<ref>/stock` and programs poll `GET /api/products/<ref>`;
through Flask each poll pays the request context, routing and the after-request hooks, more than the
stock snapshot read itself (inventory/snapshot.py). This WSGI layer, in front of Flask and behind
ProxyFix (the watcher's address counts towards the pace), answers those two polls itself when it can
give exactly Flask's answer: the product's id is one this process resolved less than two seconds ago
(catalog.cached_product_id) and its snapshot is young enough (snapshot.read_fresh: this process's
shared read, or one Redis script). The body and ETag come from the same functions the views use
(polling.product_body / stock_body), the pace from the same Pacing, the caching and security headers
from the app's own helpers, rendered once; a matching If-None-Match gets 304.

Anything else (an unknown or unresolved ref, a missing or old snapshot that needs the database, a Redis
error) goes to Flask untouched, which answers, rebuilds and resolves as before.
tests/test_poll_gate.py compares the gate's answers with Flask's.
"""

import re

from redis.exceptions import RedisError

from ..inventory import catalog, snapshot
from ..inventory.pacing import Pacing
from ..web import polling

POLLS = {
    "product": re.compile(r"/api/products/([^/]+)"),
    "stock": re.compile(r"/products/([^/]+)/stock"),
}
BODIES = {"product": polling.product_body, "stock": polling.stock_body}


class PollGate:
    """WSGI middleware answering watchers' polls before Flask (see the module docstring)."""

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self._static = {}  # (kind, scheme) -> headers every answer of that kind carries

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "GET" and not environ.get("QUERY_STRING"):
            path = environ.get("PATH_INFO", "")
            for kind, pattern in POLLS.items():
                if match := pattern.fullmatch(path):
                    answer = self._answer(environ, kind, match.group(1))
                    if answer is not None:
                        status, headers, body = answer
                        start_response(status, headers)
                        return [body]
                    break
        return self.wsgi_app(environ, start_response)

    def _answer(self, environ, kind, ref):
        """(status, headers, body) for a poll, or None to let Flask answer it."""
        config = self.app.config
        if not config.get("POLL_GATE", True):
            return None
        product_id = catalog.cached_product_id(ref)
        if product_id is None:
            return None
        try:
            snap = snapshot.read_fresh(self.app.extensions["flashsale_redis"][0], product_id,
                                       watcher=environ.get("REMOTE_ADDR"))
        except RedisError:
            return None
        if snap is None:
            return None
        poll_seconds = Pacing.from_config(config).seconds(snap.state, snap.starts - snap.now, snap.watchers)
        body, etag = BODIES[kind](snap, poll_seconds)
        headers = [*self._static_headers(kind, environ.get("wsgi.url_scheme", "http")),
                   *polling.caching_headers(config, etag, poll_seconds).items()]
        if polling.matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
            return "304 NOT MODIFIED", headers, b""
        payload = body.encode()
        return "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                          *headers], payload

    def _static_headers(self, kind, scheme):
        """The headers the app's after-request hooks add to this kind of answer, rendered once."""
        key = (kind, scheme)
        if key not in self._static:
            from ..web.security import rendered_with_hooks

            path = "/api/products/0" if kind == "product" else "/products/0/stock"
            response = rendered_with_hooks(self.app, path, "GET", scheme, lambda: self.app.response_class(""))
            self._static[key] = [(k, v) for k, v in response.headers.items()
                                 if k not in ("Content-Type", "Content-Length")]
        return self._static[key]

