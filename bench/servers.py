"""The web servers the benchmark runs the app and its baselines under, and their CPU accounting.

`production` is whatever the Procfile's `web:` line runs, so the benchmark follows production by
construction. The others are the candidates of the server comparison (docs/benchmark.md), each tuned
for this 2-core machine: 2 processes, as many request threads as the production config, a listen
backlog of 4,096 for a burst of 5,000 connections, one pooled database connection per thread, no
access log.
"""

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 2  # one per core
THREADS = 16  # what gunicorn.conf.py gives each process
BACKLOG = 4096  # net.core.somaxconn here; a flash sale arrives all at once
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """How to start one web server on a WSGI target (module:attribute) at host:port."""

    name: str
    about: str
    argv: list  # command with {target}, {host}, {port} placeholders
    env: dict = field(default_factory=dict)

    def command(self, bin_dir, target, host, port):
        """The command line for this server, with executables from bin_dir."""
        words = [w.format(target=target, host=host, port=port) for w in self.argv]
        return [str(Path(bin_dir) / words[0]), *words[1:]]

    def environment(self, host, port):
        """Extra environment for this server (the production one binds through BIND/PORT)."""
        return {"BIND": f"{host}:{port}", "PORT": str(port),
                "GRANIAN_HOST": host, "GRANIAN_PORT": str(port), **self.env}


def procfile_web(procfile=ROOT / "Procfile"):
    """The words of the Procfile's `web:` command."""
    for line in procfile.read_text().splitlines():
        if line.startswith("web:"):
            return shlex.split(line[len("web:"):])
    raise RuntimeError(f"{procfile} has no web: line")


def production():
    """The Procfile's web command, its app target replaced by the benchmark's."""
    words = procfile_web()
    target = next(w for w in reversed(words) if ":" in w and not w.startswith("-"))
    argv = [("{target}" if w == target else w) for w in words]
    return Server("production", "the Procfile's web command: " + " ".join(words), argv)


def _granian(name, blocking_threads, backpressure=None, about=""):
    argv = ["granian", "--interface", "wsgi", "--host", "{host}", "--port", "{port}",
            "--workers", str(PROCESSES), "--blocking-threads", str(blocking_threads),
            "--backlog", str(BACKLOG), "--no-ws", "--log-level", "warning"]
    if backpressure:
        argv += ["--backpressure", str(backpressure)]
    return Server(name, about or f"granian WSGI, {PROCESSES} workers x {blocking_threads} blocking "
                  f"threads, backpressure {backpressure or 'default (backlog / workers)'}",
                  argv + ["{target}"], {"DB_POOL_SIZE": str(blocking_threads)})


CANDIDATES = {
    "gunicorn": Server(
        "gunicorn", f"gunicorn gthread (bench/gunicorn.conf.py, production before granian): {PROCESSES} x "
        f"{THREADS} threads, backlog {BACKLOG}",
        ["gunicorn", "-c", str(ROOT / "bench" / "gunicorn.conf.py"), "{target}"],
        {"WEB_CONCURRENCY": str(PROCESSES), "WEB_THREADS": str(THREADS)}),
    # Backpressure left at its default (backlog / workers): every connection is read and queued for a
    # blocking thread. Capping it at the thread count (granian-bp16) starves keep-alive connections:
    # only the capped ones are ever served while the others wait (docs/benchmark.md).
    "granian": _granian("granian", THREADS),
    "granian-bp16": _granian("granian-bp16", THREADS, THREADS),
    "uwsgi": Server(
        "uwsgi", f"uWSGI (pyuwsgi) --http11-socket (keep-alive), {PROCESSES} processes x {THREADS} threads, "
        f"listen {BACKLOG}, lazy apps",
        ["uwsgi", "--http11-socket", "{host}:{port}", "--module", "{target}", "--master",
         "--processes", str(PROCESSES), "--threads", str(THREADS), "--enable-threads",
         "--lazy-apps", "--listen", str(BACKLOG), "--die-on-term", "--thunder-lock",
         "--disable-logging", "--need-app", "--ignore-sigpipe",
         "--ignore-write-errors", "--disable-write-exception"],
        {"DB_POOL_SIZE": str(THREADS)}),
}


def get(name):
    """A server by name: `production` or one of CANDIDATES."""
    if name == "production":
        return production()
    try:
        return CANDIDATES[name]
    except KeyError:
        raise SystemExit(f"unknown server {name!r}; choose from production, "
                         f"{', '.join(CANDIDATES)}") from None


def cpu_seconds(group):
    """User + system CPU seconds of every process in process group `group`, reaped children included.

    The servers run in their own sessions, so their group holds the master and its workers; a worker
    that exits is reaped by the master, whose cutime/cstime then carry its time.
    """
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                # Fields after the command (which may hold spaces), from field 3 (state) on.
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) != group:  # field 5: pgrp
            continue
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])  # fields 14-17
        ticks += utime + stime + (cutime + cstime if int(entry.name) == group else 0)
    return ticks / CLOCK_TICKS
