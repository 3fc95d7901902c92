"""Racing tests: real threads and processes against the real database and Redis (design section 3).

Each claim the design makes about concurrency is staged here for real, not argued.
"""

import asyncio
import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select, text, update

from config import TestConfig
from flashsale.errors import HoldExpired, LockBusy, SoldOut
from flashsale.extensions import db, redis_store
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory import expiry, faults, holds, locks
from flashsale.inventory.audit import audit
from flashsale.inventory.clock import db_now
from flashsale.inventory.confirmation import accept_confirmation
from flashsale.inventory.payments import take_payment
from flashsale.models import Order
from tests.faults import fire
from tests.line_buyers import buyer_in_line_behind, take_the_line
from tests.live_server import BIN, ROOT, LiveServer, server_env, wait_until


@pytest.fixture(scope="module")
def live(app):
    """The web server (granian) with two processes and a worker, on the test database and Redis."""
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=2,
                    threads=16, with_worker=True) as server:
        yield server


def count_orders(app, **filters):
    with app.app_context():
        query = select(func.count()).select_from(Order).filter_by(**filters)
        total = db.session.execute(query).scalar_one()
        db.session.remove()
        return total


def flask_audit():
    """Run `flask audit` exactly as an operator would, on the test database."""
    env = server_env(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL)
    return subprocess.run([str(BIN / "flask"), "--app", "app", "audit"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_thousand_buyers_for_a_hundred_units_get_exactly_a_hundred_holds(app, live, make_product):
    make_product(slug="herd", total_stock=100)
    requests = [("/api/products/herd/holds", {"email": f"buyer{i}@example.com"}, None)
                for i in range(1000)]
    answers = asyncio.run(fire(live.url, requests))
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 100
    codes = {body["error"]["code"] for status, body in answers if status != 201}
    assert codes <= {"sold_out", "unavailable"}
    assert count_orders(app) == 100
    assert len({body["id"] for status, body in answers if status == 201}) == 100
    product = asyncio.run(_get_json(live.url + "/api/products/herd"))
    assert product["available"] == 0 and product["state"] == "sold_out"
    result = flask_audit()
    assert result.returncode == 0, result.stderr


async def _get_json(url):
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        return await response.json()


def test_fifty_concurrent_requests_with_one_idempotency_key_make_one_hold(app, live, make_product):
    make_product(slug="idem", total_stock=10, max_per_customer=1)
    requests = [("/api/products/idem/holds", {"email": "same@example.com"}, {"Idempotency-Key": "k-50"})
                for _ in range(50)]
    answers = asyncio.run(fire(live.url, requests))
    statuses = sorted(status for status, _ in answers)
    assert statuses.count(201) == 1 and statuses.count(200) == 49
    assert len({body["id"] for _, body in answers}) == 1
    assert count_orders(app) == 1


def test_one_idempotency_key_racing_across_two_products_makes_one_hold(app, live, make_product):
    make_product(slug="left", total_stock=10)
    make_product(slug="right", total_stock=10)
    requests = [(f"/api/products/{slug}/holds", {"email": "two@example.com"}, {"Idempotency-Key": "k-lr"})
                for slug in ("left", "right") * 10]
    answers = asyncio.run(fire(live.url, requests))
    created = [body for status, body in answers if status == 201]
    assert len(created) == 1
    for status, body in answers:
        if status == 200:
            assert body["id"] == created[0]["id"]
        elif status != 201:
            assert (status, body["error"]["code"]) == (422, "idempotency_mismatch")
    assert count_orders(app) == 1


def test_confirms_racing_the_expiry_instant_never_both_confirm_and_expire(app, make_product):
    """Confirmers, expirers and a sweeper all hit holds right at the instant each one lapses; every
    confirmation accepted in time is then paid, slowly, and kept."""
    make_product(slug="edge", total_stock=300, max_per_customer=1)
    policy = holds.HoldPolicy(hold_seconds=120, lock_ttl_ms=2000, lock_wait_ms=5000)
    with app.app_context():
        hold_ids = [holds.place_hold(db.session, redis_store.client, "edge", f"e{i}@x.io", 1, policy).hold.id
                    for i in range(120)]
        # Stagger the expiries 10 ms apart, so they lapse one by one while the racers run.
        first_expiry = datetime.now(timezone.utc) + timedelta(milliseconds=500)
        expiries = [first_expiry + timedelta(milliseconds=10 * i) for i in range(len(hold_ids))]
        for hold_id, expires in zip(hold_ids, expiries, strict=True):
            db.session.execute(update(Order).where(Order.id == hold_id).values(hold_expires_at=expires))
        db.session.commit()
        db.session.remove()
    rng = random.Random(7)
    # Each confirm is aimed at its hold's expiry instant: a few ms before it, clearly before it, at it,
    # or just after it, so every kind of interleaving with the expirers and the sweeper happens.
    aims = [rng.choice([-0.004, -0.002, 0.0, -0.040, 0.005]) for _ in hold_ids]
    accepted, refused = [], []

    def at(moment):
        pause = (moment - datetime.now(timezone.utc)).total_seconds()
        if pause > 0:
            time.sleep(pause)  # aiming at an instant, not waiting for another thread

    def confirmer(indexes):
        with app.app_context():
            for i in indexes:
                at(expiries[i] + timedelta(seconds=aims[i]))
                try:
                    if accept_confirmation(db.session, hold_ids[i]).accepted_now:
                        accepted.append(hold_ids[i])
                except HoldExpired:
                    refused.append(hold_ids[i])
            db.session.remove()

    def expirer(indexes, offset):
        with app.app_context():
            for i in indexes:
                at(expiries[i] + timedelta(seconds=offset))
                expiry.expire_hold(db.session, redis_store.client, hold_ids[i])
            db.session.remove()

    def sweeper():
        with app.app_context():
            while datetime.now(timezone.utc) < expiries[-1] + timedelta(milliseconds=50):
                expiry.sweep_expired_holds(db.session, redis_store.client, batch_size=10)
            db.session.remove()

    everyone = range(len(hold_ids))
    with ThreadPoolExecutor(7) as pool:
        jobs = [pool.submit(confirmer, everyone[i::4]) for i in range(4)]
        jobs += [pool.submit(expirer, everyone, 0.0), pool.submit(expirer, everyone, 0.001)]
        jobs.append(pool.submit(sweeper))
        for job in jobs:
            job.result()

    def pay(hold_id):  # after every expiry: the queue was slow, the promise stands
        with app.app_context():
            gateway = FakeGateway(db.engine, delay_ms=20)
            settled = take_payment(db.session, redis_store.client, hold_id, gateway).status
            db.session.remove()
            return settled

    with ThreadPoolExecutor(8) as pool:
        paid = list(pool.map(pay, accepted))
    assert set(paid) == {"CONFIRMED"}
    with app.app_context():
        expiry.sweep_expired_holds(db.session, redis_store.client)
        orders = db.session.execute(select(Order)).scalars().all()
        status_of = {o.id: o.status for o in orders}
        assert accepted and refused and len(accepted) + len(refused) == len(hold_ids)
        assert {status_of[h] for h in accepted} == {"CONFIRMED"}  # every accepted promise kept
        assert {status_of[h] for h in refused} == {"EXPIRED"}  # and nothing accepted too late
        for order in orders:
            if order.status == "CONFIRMED":
                assert order.confirmation_requested_at < order.hold_expires_at
        # Exactly one outcome event per hold, ledger balanced, and money follows every outcome: one
        # capture per CONFIRMED hold at the gateway, nothing taken for an EXPIRED one.
        assert audit(db.session, FakeGateway(db.engine)) == []
        db.session.remove()


def test_a_lapsed_redis_lock_cannot_oversell_because_the_row_lock_decides(app, make_product, monkeypatch):
    """A holder stalls past LOCK_TTL_MS inside the critical section; a second buyer takes the lapsed
    Redis lock, but PostgreSQL's row lock makes it wait and then see the first hold."""
    make_product(slug="slow", total_stock=1, max_per_customer=1)
    policy = holds.HoldPolicy(hold_seconds=120, lock_ttl_ms=100, lock_wait_ms=5000)
    second_has_redis_lock = threading.Event()
    releases = []
    real_acquire, real_release = locks.ProductLock.acquire, locks.ProductLock.release
    real_queue_release = locks.ProductLock.queue_release

    def stall_under_row_lock(product_id, email):
        if email == "first@x.io":
            # Stall until the Redis lock has lapsed *and* the second buyer holds it (event, not a guess).
            assert second_has_redis_lock.wait(10), "second buyer never got the lapsed lock"

    def acquire(self):
        result = real_acquire(self)
        if threading.current_thread().name == "second":
            second_has_redis_lock.set()
        return result

    def release(self):
        released = real_release(self)
        releases.append((threading.current_thread().name, released))
        return released

    def queue_release(self, pipe):
        read = real_queue_release(self, pipe)
        name = threading.current_thread().name
        return lambda replies: releases.append((name, read(replies))) or releases[-1][1]

    monkeypatch.setattr(faults, "after_row_lock", stall_under_row_lock)
    monkeypatch.setattr(locks.ProductLock, "acquire", acquire)
    monkeypatch.setattr(locks.ProductLock, "release", release)
    monkeypatch.setattr(locks.ProductLock, "queue_release", queue_release)
    outcomes = {}

    def buy(email):
        with app.app_context():
            try:
                outcomes[email] = holds.place_hold(db.session, redis_store.client, "slow", email, 1, policy)
            except SoldOut as refusal:
                outcomes[email] = refusal
            finally:
                db.session.remove()

    first = threading.Thread(target=buy, args=("first@x.io",), name="first")
    first.start()
    with app.app_context():  # wait until the first buyer holds the Redis lock
        wait_until(lambda: redis_store.client.exists("fs:{product:1}:lock"), 5, interval=0.005)
    second = threading.Thread(target=buy, args=("second@x.io",), name="second")
    second.start()
    first.join(15)
    second.join(15)
    assert outcomes["first@x.io"].created
    assert isinstance(outcomes["second@x.io"], SoldOut)
    assert count_orders(app) == 1
    # The first holder's lock had lapsed: its release must not have deleted the second holder's lock.
    assert ("first", False) in releases and ("second", True) in releases
    with app.app_context():
        assert audit(db.session) == []


def test_the_late_holder_release_does_not_delete_the_next_holders_lock(ctx, redis):
    first = locks.ProductLock(redis, 42, ttl_ms=50, wait_ms=0).acquire()
    wait_until(lambda: not redis.exists("fs:{product:42}:lock"), 2, interval=0.005)
    second = locks.ProductLock(redis, 42, ttl_ms=5000, wait_ms=0).acquire()
    assert first.release() is False
    assert redis.get("fs:{product:42}:lock").decode() == second.token
    assert second.release() is True


def test_a_busy_lock_gives_up_after_the_bounded_wait(ctx, redis):
    with locks.ProductLock(redis, 7, ttl_ms=5000, wait_ms=0):
        started = time.monotonic()
        with pytest.raises(LockBusy):
            locks.ProductLock(redis, 7, ttl_ms=5000, wait_ms=150).acquire()
        assert 0.15 <= time.monotonic() - started < 2


def test_a_released_lock_wakes_a_waiter_without_polling(ctx, redis):
    """The waiter blocks on the wake list; the release hands over the lock at once."""
    holder = locks.ProductLock(redis, 9, ttl_ms=10_000, wait_ms=0).acquire()
    got_it = threading.Event()

    def wait_for_it():
        locks.ProductLock(redis, 9, ttl_ms=10_000, wait_ms=5000).acquire()
        got_it.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    assert not got_it.wait(0.2)  # still held
    holder.release()
    assert got_it.wait(2)
    waiter.join()


@pytest.mark.postgres("holds one product's row lock (FOR UPDATE) while another sells; SQLite's writer lock "
                      "covers the whole database")
def test_two_products_bought_at_once_do_not_block_each_other(app, make_product):
    """While one product's Redis lock *and* row lock are held, another product sells normally."""
    make_product(slug="hot", total_stock=10)
    make_product(slug="calm", total_stock=10)
    policy = holds.HoldPolicy(lock_wait_ms=200)
    with app.app_context():
        hot_lock = locks.ProductLock(redis_store.client, 1, ttl_ms=30_000, wait_ms=0).acquire()
        row_holder = db.engine.connect()
        row_transaction = row_holder.begin()
        row_holder.exec_driver_sql("SELECT id FROM products WHERE slug = 'hot' FOR UPDATE")
        try:
            results = {}

            def buy(slug, email):
                with app.app_context():
                    try:
                        results[slug] = holds.place_hold(db.session, redis_store.client, slug, email, 1, policy)
                    except LockBusy as busy:
                        results[slug] = busy
                    finally:
                        db.session.remove()

            threads = [threading.Thread(target=buy, args=(slug, f"{slug}@x.io")) for slug in ("hot", "calm")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert results["calm"].created  # completed while "hot" was locked at both levels
            assert isinstance(results["hot"], LockBusy)
        finally:
            row_transaction.rollback()
            row_holder.close()
            hot_lock.release()
    assert count_orders(app) == 1


def test_redis_stopping_mid_test_gives_503_and_the_app_recovers(app, make_product, tmp_path):
    """A private redis-server is stopped and restarted under a live app: 503 unavailable with
    Retry-After and nothing half-written while it is down, holds again once it is back."""
    from devtools.embedded_redis import EmbeddedRedis
    from flashsale import create_app

    make_product(slug="outage", total_stock=10, max_per_customer=1)
    server = EmbeddedRedis(Path(tmp_path) / "redis").start()
    try:
        private = create_app(TestConfig, REDIS_URL=server.url, REDIS_SOCKET_TIMEOUT=1.0)
        client = private.test_client()
        assert client.post("/api/products/outage/holds", json={"email": "a@x.io"}).status_code == 201
        server.stop()
        down = client.post("/api/products/outage/holds", json={"email": "b@x.io"})
        assert down.status_code == 503 and down.json["error"]["code"] == "unavailable"
        assert down.headers["Retry-After"]
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json["redis"] == "down"
        assert count_orders(app) == 1
        server.start()
        def hold_placed():
            return client.post("/api/products/outage/holds", json={"email": "b@x.io"}).status_code == 201

        wait_until(hold_placed, timeout=10, message="a hold after Redis returned")
        assert client.get("/healthz").status_code == 200
    finally:
        server.stop()
    assert count_orders(app) == 2
    with app.app_context():
        assert audit(db.session) == []


def _waiting_on_row_lock(app):
    with app.app_context():
        waiting = db.session.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%'"
        )).scalar_one()
        db.session.remove()
        return waiting > 0


@pytest.mark.postgres("watches the buyer queue on the row lock in pg_stat_activity; its SQLite twin is in "
                      "test_line_sqlite.py")
def test_a_hold_committed_for_a_buyer_who_was_never_answered_is_still_answered_201(app, make_product,
                                                                                    monkeypatch):
    """A holder takes the buyer's request, reads the clock in time, then stalls and never answers (its
    answer lost, as when Redis dies): the buyer settles it with the database and gets its hold."""
    from flashsale.inventory import batches, placement

    make_product(slug="unanswered", total_stock=5)
    policy = holds.HoldPolicy(lock_ttl_ms=200, lock_wait_ms=600)
    real_insert = placement.BatchTransaction.insert_and_commit

    def stalled_insert(self, *args):
        # Commit only once the buyer, past its deadline, is queued on the product's row lock.
        wait_until(lambda: _waiting_on_row_lock(app), 10, interval=0.01, message="the buyer on the row lock")
        return real_insert(self, *args)

    monkeypatch.setattr(placement.BatchTransaction, "insert_and_commit", stalled_insert)
    outcome = {}
    with app.app_context():
        redis = redis_store.client
        holder = locks.ProductLock(redis, 1, ttl_ms=30_000, wait_ms=0).acquire()
        buyer = buyer_in_line_behind(app, "unanswered", policy, outcome)
        request = take_the_line(redis, 1)
        answers = batches.serve(db.session, redis, 1, [request], 120, "0")  # decided in time; never sent
        db.session.remove()
        buyer.join(15)
        holder.release()
    assert isinstance(answers[request.ticket], batches.Created)
    assert "placed" in outcome and outcome["placed"].hold.id == request.hold_id
    assert count_orders(app) == 1


def test_a_request_taken_after_its_deadline_is_refused_and_its_buyer_told_503(app, make_product):
    """A holder takes the buyer's request but only reaches the database after the deadline: it must
    refuse it, so the buyer's 503 (settled with the database) is true."""
    from flashsale.inventory import batches

    make_product(slug="too-late", total_stock=5)
    policy = holds.HoldPolicy(lock_ttl_ms=200, lock_wait_ms=300)
    outcome = {}
    with app.app_context():
        redis = redis_store.client
        holder = locks.ProductLock(redis, 1, ttl_ms=30_000, wait_ms=0).acquire()
        buyer = buyer_in_line_behind(app, "too-late", policy, outcome)
        request = take_the_line(redis, 1)
        def past_deadline():
            passed = db_now(db.session).timestamp() > request.deadline
            db.session.rollback()
            return passed

        wait_until(past_deadline, 5, interval=0.01, message="the deadline, by the database clock")
        answers = batches.serve(db.session, redis, 1, [request], 120, "0")
        db.session.remove()
        buyer.join(15)
        holder.release()
    assert isinstance(answers[request.ticket], LockBusy)
    assert "refused" in outcome
    assert count_orders(app) == 0
