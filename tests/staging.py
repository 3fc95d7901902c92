"""A multi-host deployment staged on loopback: Redis primary + two replicas + three sentinels, a private
PostgreSQL database, web servers (webserver.py) behind haproxy, and workers.

    with RedisSentinels(tmp_path, base_port=26400) as redis_ha, StagedShop(...) as shop: ...

Each piece is a real process (redis-server, redis-server --sentinel, haproxy, granian, flask worker), so a
test can SIGKILL any of them.
"""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg2
import redis as redis_lib
from sqlalchemy.engine import make_url

from tests.live_server import LiveServer, stop_process, wait_until

SERVICE = "flashsale"


def missing_binaries(binaries=("redis-server", "haproxy")):
    """Why the stage cannot run here (a binary missing or unable to start), or None."""
    for binary in binaries:
        path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
        if path is None:
            return f"{binary} is not installed (.ci/run installs haproxy; redis-server comes with Redis)"
        try:
            subprocess.run([path, "-v"], capture_output=True, timeout=10, check=False)
        except OSError as error:
            return f"{binary} cannot run here: {error}"
    return None


def haproxy_binary():
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


class RedisSentinels:
    """One primary and two replicas (ports base..base+2) watched by three sentinels (base+10..base+12).

    Every server refuses writes unless a replica is connected (min-replicas-to-write 1): a primary cut
    off from its replicas answers NOREPLICAS instead of taking writes a failover would then lose. A full
    resync starts at once (repl-diskless-sync-delay 0): Redis's default 5 s wait for more replicas would keep
    a new primary answering NOREPLICAS for 5 s whenever the replica left behind cannot resync partially.
    """

    def __init__(self, root, base_port):
        self.root = Path(root)
        self.ports = [base_port, base_port + 1, base_port + 2]
        self.sentinel_ports = [base_port + 10, base_port + 11, base_port + 12]
        self.processes = {}

    @property
    def sentinels(self):
        """REDIS_SENTINELS for the app."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self):
        for index, port in enumerate(self.ports):
            replica_of = [] if index == 0 else ["--replicaof", "127.0.0.1", str(self.ports[0])]
            self._spawn(port, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(self._dir(port)),
                               "--min-replicas-to-write", "1", "--min-replicas-max-lag", "3",
                               "--repl-diskless-sync-delay", "0", *replica_of])
        primary = self.client(self.ports[0])
        wait_until(lambda: _replicas_in_sync(primary) == 2, 15, message="both replicas in sync")
        for port in self.sentinel_ports:
            config = self._dir(port) / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self._dir(port)}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports[0]} 2\n"
                # 1 s let a loaded 2-CPU machine miss the new primary's first PING and fail over twice.
                f"sentinel down-after-milliseconds {SERVICE} 2000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 2\n")
            self._spawn(port, ["redis-server", str(config), "--sentinel"])
        wait_until(self._sentinels_agree, 20, interval=0.1, message="three sentinels that see each other")
        return self

    def client(self, port, **options):
        return redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1,
                               **options)

    def primary_port(self):
        """The primary's port as the first sentinel that answers names it (None if none answers)."""
        for port in self.sentinel_ports:
            try:
                address = self.client(port).execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
                return int(address[1])
            except (redis_lib.RedisError, TypeError):
                continue
        return None

    def kill(self, port):
        """SIGKILL one server: no goodbye, no snapshot."""
        process = self.processes.pop(port)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)

    def promoted(self, old_port):
        """The new primary's port once every live sentinel names one other than old_port and it is a master."""
        named = set()
        for port in self.sentinel_ports:
            try:
                address = self.client(port).execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
            except redis_lib.RedisError:
                continue
            named.add(int(address[1]))
        if len(named) != 1 or old_port in named:
            return None
        new_port = named.pop()
        try:
            role = self.client(new_port).execute_command("ROLE")[0]
        except redis_lib.RedisError:
            return None
        return new_port if role == b"master" else None

    def stop(self):
        for process in self.processes.values():
            stop_process(process, timeout=5)
        self.processes.clear()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()  # a half-started stage must not outlive the test
            raise

    def __exit__(self, *exc):
        self.stop()
        return False

    def _dir(self, port):
        path = self.root / str(port)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _spawn(self, port, argv):
        log = open(self._dir(port) / "log", "ab")  # noqa: SIM115 - the process keeps its own copy
        self.processes[port] = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def _sentinels_agree(self):
        try:
            for port in self.sentinel_ports:
                info = self.client(port).sentinel_master(SERVICE)
                if int(info["num-other-sentinels"]) != 2 or int(info["num-slaves"]) != 2:
                    return False
            return True
        except redis_lib.RedisError:
            return False


class PrimaryWatch(threading.Thread):
    """Asks the sentinels for the primary every 50 ms and notes each change: [(monotonic time, port)]."""

    def __init__(self, redis_ha):
        super().__init__(daemon=True)
        self.redis_ha, self.changes, self.done = redis_ha, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            port = self.redis_ha.promoted(None)
            if port is not None and (not self.changes or self.changes[-1][1] != port):
                self.changes.append((time.monotonic(), port))
            self.done.wait(0.05)

    def stop(self):
        self.done.set()
        self.join(5)
        return self.changes


def _replicas_in_sync(client):
    """Replicas that count for min-replicas-to-write (connected is not enough: one may await its sync)."""
    try:
        return int(client.info("replication")["min_slaves_good_slaves"])
    except redis_lib.RedisError:
        return 0


class Haproxy:
    """haproxy on `port`, balancing round robin over the web servers, checking GET /livez every 300 ms."""

    def __init__(self, root, port, backends):
        self.root, self.port, self.backends = Path(root), port, backends
        self.url = f"http://127.0.0.1:{port}"
        self.process = None

    def start(self):
        servers = "\n".join(f"  server web{n} 127.0.0.1:{port} check" for n, port in enumerate(self.backends))
        config = self.root / "haproxy.cfg"
        config.write_text(f"""global
  maxconn 512
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 2
  option redispatch
frontend shop
  bind 127.0.0.1:{self.port}
  default_backend web
backend web
  balance roundrobin
  option httpchk GET /livez
  http-check expect status 200
  default-server inter 300ms fall 2 rise 2
{servers}
""")
        log = open(self.root / "haproxy.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=log, stderr=log,
                                        start_new_session=True)
        log.close()
        return self

    def stop(self):
        stop_process(self.process, timeout=5)


def private_database(test_database_url, suffix):
    """A fresh PostgreSQL database beside the test database (flashsale_test_x -> flashsale_failover_x)."""
    url = make_url(test_database_url)
    name = url.database.replace("flashsale_test", f"flashsale_{suffix}")
    if name == url.database:
        name = f"{url.database}_{suffix}"
    admin = psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                             dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return url.set(database=name).render_as_string(hide_password=False)


def web_server(database_url, port, redis_ha, **env):
    """A production web server (one granian process) on `port`, on Redis through the sentinels only:
    REDIS_URL names a dead port, so anything that still read it would fail."""
    server = LiveServer(database_url, "redis://127.0.0.1:1/0", workers=1, threads=8,
                        REDIS_SENTINELS=redis_ha.sentinels, REDIS_SENTINEL_SERVICE=SERVICE, **env)
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    return server
