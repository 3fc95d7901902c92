"""Redis high availability in the small (design section 13): a Redis that refuses writes (a demoted
primary's READONLY, a primary without replicas' NOREPLICAS) is an outage, answered 503 + Retry-After with
nothing written; and the worker's scheduler, killed, runs again within a sweep period."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from config import TestConfig
from flashsale import create_app
from tests.faults import DATABASE_URL, orders
from tests.live_server import LiveServer, stop_process, wait_until

REFUSING_PORTS = {"replica": 26440, "lonely primary": 26441}


@pytest.fixture
def refusing_redis(tmp_path):
    """{kind: url} of two Redis servers that refuse writes: a replica (READONLY) and a primary that
    requires a replica it does not have (NOREPLICAS)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    processes = []
    options = {"replica": ["--replicaof", "127.0.0.1", "1"], "lonely primary": ["--min-replicas-to-write", "1"]}
    for kind, port in REFUSING_PORTS.items():
        processes.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path), *options[kind]],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    try:
        import redis as redis_lib

        for port in REFUSING_PORTS.values():
            wait_until(lambda port=port: _pings(redis_lib, port), 10, message=f"redis-server on {port}")
        yield {kind: f"redis://127.0.0.1:{port}/0" for kind, port in REFUSING_PORTS.items()}
    finally:
        for process in processes:
            stop_process(process, timeout=5)


def _pings(redis_lib, port):
    try:
        return redis_lib.Redis(port=port, socket_timeout=1).ping()
    except redis_lib.RedisError:
        return False


@pytest.mark.parametrize("kind", sorted(REFUSING_PORTS))
def test_a_redis_that_refuses_writes_is_an_outage_503_with_retry_after(app, make_product, refusing_redis, kind):
    make_product(slug="drop", total_stock=10)
    refused = create_app(TestConfig, REDIS_URL=refusing_redis[kind]).test_client().post(
        "/api/products/drop/holds", json={"email": "ann@x.io"})
    assert refused.status_code == 503 and refused.json["error"]["code"] == "unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    assert orders(app) == {}


def test_a_killed_scheduler_runs_again_within_a_sweep_period(app):
    """RQ forks the scheduler; killed (or dead of a Redis error), RQ itself would start it again only in
    its maintenance, every 600 s. Our worker checks every SWEEP_SECONDS."""
    worker = LiveServer(DATABASE_URL, TestConfig.REDIS_URL, SWEEP_SECONDS=1)
    process = worker.start_worker()
    try:
        first = wait_until(lambda: _children(process.pid), 30, message="the scheduler process")
        os.kill(first[0], signal.SIGKILL)
        killed_at = time.monotonic()
        again = wait_until(lambda: [pid for pid in _children(process.pid) if pid not in first], 10,
                           message="a new scheduler process")
        print(f"\nscheduler running again {time.monotonic() - killed_at:.2f} s after SIGKILL (pid {again[0]})")
        assert time.monotonic() - killed_at < 1 + 3  # one sweep period, plus the fork and the check's own pace
        assert process.poll() is None  # the worker itself never stopped
    finally:
        stop_process(process)


def _children(pid):
    """Live child processes of pid (the forked RQ scheduler)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return [child for child in found if _alive(child)]


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except OSError:
        return False
