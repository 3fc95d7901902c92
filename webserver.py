"""Production web server: `python webserver.py app:app` runs the app under granian's WSGI mode.

Chosen by measurement over gunicorn gthread and uWSGI (docs/benchmark.md, "Choosing the web server"):
the same 2 processes x 16 threads answer hello world 2.5x faster, sold-out refusals and holds 1.1-1.2x
faster, with less CPU per request and every keep-alive connection served. Granian parses HTTP and
accepts connections in Rust, outside the GIL; each request runs on one of a worker's blocking threads
while it waits on the product lock, Redis or PostgreSQL (I/O wait), so a few processes with many
threads keep the CPU busy.

Settings come from the environment (docs/production.md), a few also from the command line:
WEB_CONCURRENCY processes (default: cores) x WEB_THREADS threads (16); BIND (default 0.0.0.0:$PORT,
or :8000), WEB_BACKLOG 4096, WEB_MAX_RSS (MiB; recycle a worker past it, sampled every
WEB_RSS_SAMPLE_SECONDS, 30), WEB_LIFETIME (seconds, >= 60; recycle workers that old),
WEB_KILL_TIMEOUT 20 (seconds a stopping worker gets to finish its requests), WEB_RESPAWN_SECONDS
3.5 (how long a new worker gets to start before the one it replaces stops), ACCESS_LOG (set: log
each request), LOG_LEVEL, LOG_FORMAT (json: every line a JSON object, granian's too). Signals: SIGHUP
reloads the workers gracefully (new ones start, then the old ones finish their requests and exit);
SIGTERM or SIGINT drains and stops.
"""

import argparse
import os


def parse_args(argv=None):
    """Command-line options; each defaults to its environment variable."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="the WSGI application, module:attribute (app:app)")
    parser.add_argument("--bind", default=env("BIND") or f"0.0.0.0:{env('PORT', '8000')}",
                        help="HOST:PORT ([::1]:PORT for IPv6); env BIND, else 0.0.0.0:$PORT")
    parser.add_argument("--workers", type=int, default=int(env("WEB_CONCURRENCY", os.cpu_count())))
    parser.add_argument("--threads", type=int, default=int(env("WEB_THREADS", 16)),
                        help="blocking threads per worker: requests one process serves at once")
    parser.add_argument("--backlog", type=int, default=int(env("WEB_BACKLOG", 4096)))
    parser.add_argument("--max-rss", type=int, default=int(env("WEB_MAX_RSS", 0)) or None,
                        help="MiB; a worker past it is recycled (default: never)")
    parser.add_argument("--rss-sample-seconds", type=int,
                        default=int(env("WEB_RSS_SAMPLE_SECONDS", 30)))
    parser.add_argument("--lifetime", type=int, default=int(env("WEB_LIFETIME", 0)) or None,
                        help="seconds (>= 60); workers that old are recycled (default: never)")
    parser.add_argument("--kill-timeout", type=int, default=int(env("WEB_KILL_TIMEOUT", 20)))
    parser.add_argument("--respawn-seconds", type=float, default=float(env("WEB_RESPAWN_SECONDS", 3.5)),
                        help="on a reload or recycle, how long a new worker gets to start before "
                             "the old one is stopped")
    return parser.parse_args(argv)


def split_bind(bind):
    """('host', port) from HOST:PORT or [IPv6]:PORT."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def server(options):
    """The granian server for these options (not yet serving)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    # One pooled database connection per thread: with fewer, busy threads open and close a
    # PostgreSQL connection per request (measured: it halves throughput). Workers read config.py
    # after this, and inherit the environment.
    os.environ.setdefault("DB_POOL_SIZE", str(options.threads))
    host, port = split_bind(options.bind)
    return Granian(
        options.target, address=host, port=port, interface=Interfaces.WSGI,
        workers=options.workers, blocking_threads=options.threads, backlog=options.backlog,
        # backpressure stays at its default (backlog / workers): capping it at the thread count
        # left keep-alive connections beyond the cap unserved for the whole benchmark.
        websockets=False,
        respawn_failed_workers=True,  # a worker that dies is replaced, as gunicorn's master does
        workers_max_rss=options.max_rss, rss_sample_interval=options.rss_sample_seconds,
        workers_lifetime=options.lifetime, workers_kill_timeout=options.kill_timeout,
        respawn_interval=options.respawn_seconds,
        log_level=LogLevels(os.environ.get("LOG_LEVEL", "info").lower()),
        log_access=bool(os.environ.get("ACCESS_LOG")),
        log_dictconfig=json_log_config() if os.environ.get("LOG_FORMAT", "").strip().lower() == "json" else None,
    )


def json_log_config():
    """Granian's own log lines as JSON objects too (LOG_FORMAT=json; the app's are web/logs.py's)."""
    formatter = {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                 "datefmt": "%Y-%m-%dT%H:%M:%S%z",
                 "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}}
    return {"formatters": {"generic": formatter, "access": formatter}}


if __name__ == "__main__":
    server(parse_args()).serve()
