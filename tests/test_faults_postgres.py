"""Fault: PostgreSQL kills the app's connections (pg_terminate_backend), mid-transaction and idle, while
the real web server serves holds. The requests in flight fail cleanly (503, no partial hold; a lock holder
serves a batch of waiting buyers in one transaction, so a kill fails that batch), the pool replaces dead
connections (pool_pre_ping), and later requests work.

FAULT_DELAY_IN_LOCK_MS (a test hook) keeps each hold's transaction open, holding the product's row
lock, long enough for the test to find its backend `idle in transaction` and terminate it.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text

from config import TestConfig
from tests.faults import (
    DATABASE_URL,
    assert_audit_passes,
    assert_every_accepted_hold_is_stored,
    burst,
    call,
    hold,
    orders,
)
from tests.live_server import LiveServer, wait_until

pytestmark = pytest.mark.postgres("kills the app's PostgreSQL backends (pg_terminate_backend) mid-transaction")

APP_NAME = "flashsale-fault-web"
IN_TRANSACTION = (f"application_name = '{APP_NAME}' AND state = 'idle in transaction' "
                  "AND query ILIKE '%FOR UPDATE%'")


@pytest.fixture(scope="module")
def admin_db(app):
    """A connection of our own to watch and terminate the app's backends."""
    engine = create_engine(TestConfig.SQLALCHEMY_DATABASE_URI, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def terminate(engine, where):
    """pg_terminate_backend every backend matching `where`; returns how many were killed."""
    with engine.connect() as connection:
        return sum(connection.execute(text(
            f"SELECT pg_terminate_backend(pid)::int FROM pg_stat_activity WHERE {where}")).scalars())


def app_backends(engine):
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": APP_NAME}).scalar_one()


def test_a_backend_killed_mid_transaction_fails_the_request_cleanly_and_the_pool_recovers(
        app, make_product, admin_db):
    make_product(slug="drop", total_stock=500, max_per_customer=1)
    url = f"{DATABASE_URL}?application_name={APP_NAME}"
    with LiveServer(url, TestConfig.REDIS_URL, workers=2, threads=8, FAULT_DELAY_IN_LOCK_MS=1000,
                    LOCK_WAIT_MS=20000) as server:
        # One request: its transaction holds the row lock; kill its backend right there.
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(hold, server.url, "drop", "victim@x.io")
            wait_until(lambda: terminate(admin_db, IN_TRANSACTION), 10,
                       interval=0.01, message="the hold's backend, idle in transaction")
            victim = pending.result()
        assert victim.status == 503 and victim.code == "unavailable"
        assert victim.headers["Retry-After"]
        assert orders(app) == {}, "a partial hold was left behind"

        # A burst while a killer terminates the first three backends it finds mid-transaction.
        stop, killed = threading.Event(), []

        def killer():
            while not stop.is_set() and sum(killed) < 3:
                killed.append(terminate(admin_db, IN_TRANSACTION))
                stop.wait(0.02)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            answers = burst(server.url, "drop", [f"burst{i}@x.io" for i in range(12)], concurrency=12)
        finally:
            stop.set()
            thread.join()
        statuses = [a.status for a in answers]
        assert set(statuses) <= {201, 503}, statuses
        # A lock holder serves a batch of the line in one transaction: a kill fails that whole batch.
        assert statuses.count(503) >= sum(killed) > 0
        assert all(a.code == "unavailable" and a.headers["Retry-After"]
                   for a in answers if a.status == 503)
        accepted, stored = assert_every_accepted_hold_is_stored(app, answers)
        assert stored == accepted, "a request that failed left a hold behind"

        # Kill every idle pooled connection too: pre-ping replaces them, so no request sees it.
        assert app_backends(admin_db) > 0
        terminate(admin_db, f"application_name = '{APP_NAME}'")
        later = [hold(server.url, "drop", f"later{i}@x.io") for i in range(2)]
        later += burst(server.url, "drop", [f"later-burst{i}@x.io" for i in range(6)], concurrency=6)
        assert [a.status for a in later] == [201] * 8
        assert call(server.url + "/healthz").status == 200
        print(f"\nburst: {statuses.count(201)} held, {statuses.count(503)} refused with 503, "
              f"{sum(killed)} backends killed mid-transaction")
    assert len(orders(app)) == len(accepted) + 8
    assert_audit_passes(app)
