"""Real servers for end-to-end tests: the production web server (webserver.py: granian, several
processes) and an RQ worker, as in production.

    with LiveServer(database_url, redis_url, workers=2) as server:
        requests to server.url ...

Both run as subprocesses with the test database and Redis, and are stopped (whole process group) on exit.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port():
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(database_url, redis_url, **overrides):
    """Environment for a server process on the given database and Redis."""
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "FLASHSALE_ENV": "testing",
        "SECRET_KEY": "live-test", "RATELIMIT_ENABLED": "false", "PYTHONPATH": str(ROOT),
    })
    env.update({key: str(value) for key, value in overrides.items()})
    return env


def wait_until(predicate, timeout, interval=0.05, message="condition"):
    """Poll predicate() until it is truthy or the deadline passes (then AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class LiveServer:
    """The production web server on a free port (and optionally `flask worker`), stopped on exit.

    server_args go to webserver.py's command line; log names a file for the web server's output
    (default: discarded).
    """

    def __init__(self, database_url, redis_url, workers=2, threads=16, with_worker=False,
                 server_args=(), log=None, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = server_env(database_url, redis_url, **env)
        self.workers, self.threads = workers, threads
        self.with_worker = with_worker
        self.server_args = list(server_args)
        self.log = log
        self.web = None
        self.worker = None

    def start(self, timeout=30):
        """Start the processes and wait until /healthz answers 200."""
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.web = subprocess.Popen(
            [sys.executable, str(ROOT / "webserver.py"), "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(self.workers), "--threads", str(self.threads), *self.server_args,
             "app:app"],
            cwd=ROOT, env=self.env, start_new_session=True, stdout=output,
            stderr=output if self.log else None,
        )
        if self.log:
            output.close()  # the server keeps its own copy
        if self.with_worker:
            self.start_worker()
        wait_until(self.healthy, timeout, message=f"the web server on {self.url}")
        return self

    def start_worker(self):
        """Start (or restart) the RQ worker with the scheduler and the sweeper."""
        self.worker = subprocess.Popen([str(BIN / "flask"), "--app", "app", "worker"], cwd=ROOT,
                                       env=self.env, start_new_session=True)
        return self.worker

    def healthy(self):
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self):
        """Stop everything this server started."""
        for process in (self.worker, self.web):
            stop_process(process)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def stop_process(process, sig=signal.SIGTERM, timeout=15):
    """Signal a process group and wait for it (SIGKILL after timeout)."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
