"""Request ids and structured logs: every answer carries X-Request-Id, every log line made while serving
it (or running a job it caused) names it, and LOG_FORMAT=json writes one JSON object per line.

The id is taken from the request's X-Request-Id when a proxy set a well-formed one, else made here. The
WSGI layer that sets it (RequestIds) sits outside every gate (gates/__init__.py), so an answer the
sold-out or poll gate gives before Flask carries it too. Jobs enqueued while serving a request take
the id in their RQ meta (worker/jobs.py), and the worker sets it around each job (worker/runner.py),
so a confirmation's payment logs under the id of the request that accepted it.
"""

import contextvars
import logging
import os
import re
import sys
import time

REQUEST_ID_HEADER = "X-Request-Id"
ENVIRON_KEY = "flashsale.request_id"
WELL_FORMED = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
current_request_id = contextvars.ContextVar("request_id", default=None)
current_job_id = contextvars.ContextVar("job_id", default=None)
access_log = logging.getLogger("flashsale.access")


def new_request_id():
    """A fresh id: 16 random bytes as hex."""
    return os.urandom(16).hex()


class RequestIds:
    """WSGI middleware: give each request an id, answer with it, keep it for the logs while serving."""

    def __init__(self, wsgi_app, log_requests=False):
        self.wsgi_app = wsgi_app
        self.log_requests = log_requests

    def __call__(self, environ, start_response):
        given = environ.get("HTTP_X_REQUEST_ID")
        request_id = given if given and WELL_FORMED.match(given) else new_request_id()
        environ[ENVIRON_KEY] = request_id
        token = current_request_id.set(request_id)
        started = time.perf_counter()
        status_line = []

        # Neither Flask nor a gate sets X-Request-Id, so the header is added, not replaced (this runs
        # for every answer, the sold-out gate's included: a few microseconds).
        def start_with_id(status, headers, exc_info=None):
            status_line.append(status)
            return start_response(status, [*headers, (REQUEST_ID_HEADER, request_id)], exc_info)

        try:
            return self.wsgi_app(environ, start_with_id)
        finally:
            if self.log_requests:
                self._log(environ, status_line[-1] if status_line else "0", started)
            current_request_id.reset(token)

    @staticmethod
    def _log(environ, status, started):
        """One access line: method, path, status, duration, client address (and the request id)."""
        code = int(status.split(" ", 1)[0])
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        access_log.info("%s %s %s", method, path, code,
                        extra={"method": method, "path": path, "status": code,
                               "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                               "remote_addr": environ.get("REMOTE_ADDR")})


class WithIds(logging.Filter):
    """Put the current request id and job id on each record (None outside a request or a job)."""

    def filter(self, record):
        record.request_id = current_request_id.get()
        record.job_id = current_job_id.get()
        return True


def json_formatter():
    """One JSON object per record: time, level, logger, message, request_id, job_id, and any extra."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(job_id)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         datefmt="%Y-%m-%dT%H:%M:%S%z")


def install_json_logging(level):
    """Route every logger through one stderr handler writing JSON lines (once per process)."""
    root = logging.getLogger()
    if any(getattr(handler, "flashsale_json", False) for handler in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.flashsale_json = True
    handler.addFilter(WithIds())
    handler.setFormatter(json_formatter())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def init_app(app):
    """LOG_FORMAT=json: JSON lines for this process, and one access line per request."""
    json_logs = app.config.get("LOG_FORMAT", "text") == "json"
    if json_logs:
        install_json_logging(app.config.get("LOG_LEVEL", "INFO").upper())
    app.extensions["flashsale_log_requests"] = json_logs


def wrap(app):
    """Put the request-id layer outside app.wsgi_app (called last, after the gates are installed)."""
    app.wsgi_app = RequestIds(app.wsgi_app, log_requests=app.extensions.get("flashsale_log_requests", False))
