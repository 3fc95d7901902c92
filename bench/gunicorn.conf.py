"""The previous production settings, gunicorn gthread: `gunicorn -c bench/gunicorn.conf.py app:app`.

Kept for the benchmark's server comparison (bench/servers.py, `--servers gunicorn,...`); production
now runs webserver.py (granian), chosen by that comparison (docs/benchmark.md).

gthread workers: each request holds a thread while it waits on the product lock or PostgreSQL, which is
I/O wait, so a few processes with many threads keep the CPU busy without gevent's starvation of locked
paths. WEB_CONCURRENCY processes x WEB_THREADS threads; scale out by adding processes or machines.
"""

import multiprocessing
import os

# BIND wins; else PORT (set by Procfile platforms); else 8000. `--bind` on the command line overrides both.
bind = os.environ.get("BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", 16))
# One pooled database connection per thread: with fewer, busy threads open and close a PostgreSQL
# connection per request (measured: it halves throughput). Workers import config.py after this runs.
os.environ.setdefault("DB_POOL_SIZE", str(threads))
backlog = int(os.environ.get("WEB_BACKLOG", 4096))  # a flash sale arrives all at once
timeout = int(os.environ.get("WEB_TIMEOUT", 30))
graceful_timeout = 20
keepalive = 5
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", 0))  # recycle workers; 0 = never
max_requests_jitter = max_requests // 10
accesslog = os.environ.get("ACCESS_LOG")  # unset: no access log (it costs on the hot path)
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# gunicorn >= 24 opens a control socket at one fixed path per user, which several servers on a machine
# (quick start, tests, staging) would fight over: off unless GUNICORN_CONTROL_SOCKET names one.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET") or None
control_socket_disable = control_socket is None
if control_socket is None:
    del control_socket
