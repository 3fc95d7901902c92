"""Fault: the Redis lock lapses while its holder is slow, under the real web server (two processes).

FAULT_DELAY_IN_LOCK_MS (a test hook) makes every holder sleep 600 ms inside the critical section while
the lock lives 200 ms, so several buyers are "inside" at once. The database still decides (PostgreSQL's
row lock, SQLite's writer lock): no oversell. And a late holder's release (compare-and-delete) never
deletes the next holder's lock.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text

from config import TestConfig
from flashsale import keys
from tests.faults import (
    DATABASE_URL,
    assert_audit_passes,
    assert_every_accepted_hold_is_stored,
    burst,
    hold,
)
from tests.live_server import LiveServer, wait_until

APP_NAME = "flashsale-fault-lock"
LOCK_TTL_MS, DELAY_MS = 200, 600


@pytest.fixture(scope="module")
def slow_holders(app):
    """The web server whose every hold outlives its Redis lock three times over."""
    # On PostgreSQL the app's backends carry a name, so the test can watch them wait on the row lock.
    url = f"{DATABASE_URL}?application_name={APP_NAME}" if DATABASE_URL.startswith("postgresql") else DATABASE_URL
    with LiveServer(url, TestConfig.REDIS_URL, workers=2, threads=8, LOCK_TTL_MS=LOCK_TTL_MS,
                    FAULT_DELAY_IN_LOCK_MS=DELAY_MS, LOCK_WAIT_MS=20000) as server:
        yield server


def backends_waiting_on_the_row_lock():
    """How many of the app's backends wait on a PostgreSQL lock right now."""
    engine = create_engine(TestConfig.SQLALCHEMY_DATABASE_URI)
    try:
        with engine.connect() as connection:
            return connection.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                "AND wait_event_type = 'Lock'"), {"name": APP_NAME}).scalar_one()
    finally:
        engine.dispose()


def test_a_lapsed_lock_under_slow_holders_still_cannot_oversell(app, make_product, slow_holders):
    make_product(slug="drop", total_stock=2, max_per_customer=1)
    answers = burst(slow_holders.url, "drop", [f"b{i}@x.io" for i in range(6)], concurrency=6)
    statuses = sorted(a.status for a in answers)
    assert statuses == [201, 201, 409, 409, 409, 409]
    assert all(a.code == "sold_out" for a in answers if a.status == 409)
    accepted, stored = assert_every_accepted_hold_is_stored(app, answers)
    assert stored == accepted and len(stored) == 2
    assert_audit_passes(app)


@pytest.mark.postgres("watches the holders queue on the row lock in pg_stat_activity; SQLite's writer lock "
                      "has no such view (the test above proves the outcome there)")
def test_slow_holders_inside_a_lapsed_lock_queue_on_the_row_lock(app, make_product, slow_holders):
    make_product(slug="drop", total_stock=2, max_per_customer=1)
    stop, waiting = threading.Event(), []

    def watch():
        while not stop.is_set():
            waiting.append(backends_waiting_on_the_row_lock())
            stop.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answers = burst(slow_holders.url, "drop", [f"b{i}@x.io" for i in range(6)], concurrency=6)
    finally:
        stop.set()
        watcher.join()
    assert sorted(a.status for a in answers) == [201, 201, 409, 409, 409, 409]
    # The Redis lock let several holders in at once: they queued on the row lock instead.
    assert max(waiting) >= 1


def test_the_late_holders_release_leaves_the_next_holders_lock_alone(app, make_product, slow_holders):
    product_id = make_product(slug="drop", total_stock=5, max_per_customer=1)
    redis = redis_lib.Redis.from_url(TestConfig.REDIS_URL)
    lock_key = keys.lock(product_id)
    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(hold, slow_holders.url, "drop", "late@x.io")
        wait_until(lambda: redis.exists(lock_key), 10, interval=0.005, message="the holder's lock")
        wait_until(lambda: not redis.exists(lock_key), 2, interval=0.005, message="the lock to lapse")
        # The next holder takes the lapsed lock while the late holder is still inside.
        assert redis.set(lock_key, "the-next-holder", nx=True, px=10_000)
        answer = late.result()
    try:
        assert answer.status == 201  # the row lock kept it correct, so the late hold stands
        assert redis.get(lock_key) == b"the-next-holder", "the late holder deleted another's lock"
    finally:
        redis.delete(lock_key)
    assert_audit_passes(app)
