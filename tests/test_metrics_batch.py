"""Recording metrics: one round trip each, or batched per process (METRICS_BATCH_SECONDS) with no round
trip per recording, nothing lost or counted twice."""

import logging
import multiprocessing
import subprocess
import sys

import pytest
import redis as redis_lib

from config import TestConfig
from flashsale import metrics
from tests.live_server import ROOT, free_port, server_env, wait_until


@pytest.fixture
def batching():
    """This process batches its recordings; its own thread never writes during a test (an hour)."""
    metrics.batch_recordings(3600)
    yield
    metrics.batch_recordings(0)


def totals(redis):
    return {k.decode(): int(v) for k, v in redis.hgetall("fs:metrics:totals").items()}


def count_commands(redis, monkeypatch):
    sent = []
    original = type(redis).execute_command

    def counting(self, *args, **kwargs):
        sent.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(redis), "execute_command", counting)
    return sent


def test_recording_an_outcome_is_one_round_trip(redis, monkeypatch):
    metrics.record_outcome(redis, "created")  # the script is loaded once per server, then EVALSHA
    sent = count_commands(redis, monkeypatch)
    metrics.record_outcome(redis, "created", latency_ms=3.2, lock_wait_ms=0.4, also=("reconciled",))
    assert sent == ["EVALSHA"]
    totals = metrics.snapshot(redis)["totals"]
    assert totals["created"] == 2 and totals["reconciled"] == 1
    assert [float(x) for x in redis.lrange("fs:metrics:latency", 0, -1)] == [3.2]
    assert [float(x) for x in redis.lrange("fs:metrics:lock_wait", 0, -1)] == [0.4]


def test_a_batched_recording_makes_no_round_trip_and_a_read_here_writes_it_first(redis, batching,
                                                                                 monkeypatch):
    redis.script_load(metrics.RECORD_SCRIPT.source)  # as on a server that has run it once
    sent = count_commands(redis, monkeypatch)
    metrics.record_outcome(redis, "created", latency_ms=3.2, lock_wait_ms=0.4)
    metrics.record_outcome(redis, "created", latency_ms=4.5)
    metrics.record_outcome(redis, "sold_out", also=("reconciled",))
    assert sent == [] and totals(redis) == {}
    board = metrics.snapshot(redis)
    assert sent.count("EVALSHA") + sent.count("EVAL") == 1  # one bucket: one script call for all
    assert {k: v for k, v in board["totals"].items() if v} == {"created": 2, "sold_out": 1, "reconciled": 1}
    assert [float(x) for x in redis.lrange("fs:metrics:latency", 0, -1)] == [4.5, 3.2]  # newest first
    assert [float(x) for x in redis.lrange("fs:metrics:lock_wait", 0, -1)] == [0.4]
    metrics.flush()
    assert totals(redis) == {"created": 2, "sold_out": 1, "reconciled": 1}  # written once, not again


def test_counts_land_in_the_bucket_of_the_moment_they_were_recorded(redis, batching, monkeypatch):
    first = metrics._bucket()
    monkeypatch.setattr(metrics, "_bucket", lambda now=None: first)
    metrics.record_outcome(redis, "created")
    monkeypatch.setattr(metrics, "_bucket", lambda now=None: first + 1)
    metrics.record_outcome(redis, "created")
    metrics.record_outcome(redis, "sold_out")
    monkeypatch.undo()
    metrics.flush()
    bucket = lambda b: {k.decode(): int(v) for k, v in redis.hgetall(f"fs:metrics:bucket:{b}").items()}  # noqa: E731
    assert bucket(first) == {"created": 1}
    assert bucket(first + 1) == {"created": 1, "sold_out": 1}
    assert totals(redis) == {"created": 2, "sold_out": 1}


def test_the_batch_thread_writes_on_its_own(redis):
    metrics.batch_recordings(0.05)
    try:
        metrics.record_outcome(redis, "released")
        wait_until(lambda: totals(redis).get("released") == 1, 10, message="the thread's write")
    finally:
        metrics.batch_recordings(0)
    assert totals(redis) == {"released": 1}


def test_switching_batching_off_writes_what_is_pending(redis, batching):
    metrics.record_outcome(redis, "accepted")
    metrics.batch_recordings(0)
    assert totals(redis) == {"accepted": 1}
    metrics.record_outcome(redis, "accepted")  # one round trip each again
    assert totals(redis) == {"accepted": 2}


def test_a_redis_outage_drops_that_write_with_a_warning_and_raises_nothing(redis, batching, caplog):
    gone = redis_lib.Redis(port=free_port(), socket_connect_timeout=0.2)
    metrics.record_outcome(gone, "created")
    metrics.record_outcome(redis, "sold_out")
    with caplog.at_level(logging.WARNING, logger="flashsale.metrics"):
        metrics.flush()
    assert "metrics not recorded (created): Redis unavailable" in caplog.text
    assert totals(redis) == {"sold_out": 1}  # the other client's batch was written all the same


def _record_in_child(url):
    metrics.record_outcome(redis_lib.Redis.from_url(url), "released")


def test_a_forked_child_writes_its_own_recordings_when_it_ends_and_not_its_parents(redis, batching):
    """As granian's workers do: a multiprocessing child ends with os._exit, which skips atexit."""
    metrics.record_outcome(redis, "created")  # pending in the parent when it forks
    child = multiprocessing.get_context("fork").Process(target=_record_in_child, args=(TestConfig.REDIS_URL,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert totals(redis) == {"released": 1}  # the child's, written as it ended; not the parent's
    metrics.flush()
    assert totals(redis) == {"created": 1, "released": 1}


def test_a_process_that_exits_writes_what_it_batched(redis):
    script = ("from config import TestConfig; from flashsale import create_app, metrics; "
              "from flashsale.extensions import redis_store; "
              "app = create_app(TestConfig, METRICS_BATCH_SECONDS=3600); app.app_context().push(); "
              "[metrics.record_outcome(redis_store.client, 'created', latency_ms=1.5) for _ in range(3)]")
    env = server_env(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL)
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=60)
    assert totals(redis) == {"created": 3}
    assert [float(x) for x in redis.lrange("fs:metrics:latency", 0, -1)] == [1.5, 1.5, 1.5]
