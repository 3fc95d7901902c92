"""The line on SQLite (the quick start): real threads, a real Redis and a real SQLite file, on every run.

These build their own SQLite app, whatever TEST_DATABASE_URL says, so the PostgreSQL suite proves the
quick start's placement too: the same line, with SQLite's writer lock (BEGIN IMMEDIATE) as the row lock.
"""

import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from flask_migrate import upgrade
from sqlalchemy import event, func, select

from config import TestConfig
from flashsale import create_app, keys
from flashsale.errors import IdempotencyMismatch, LimitExceeded, LockBusy, SoldOut
from flashsale.extensions import db, redis_store
from flashsale.inventory import batches, catalog, faults, holds, locks, placement, stock
from flashsale.inventory.audit import audit
from flashsale.inventory.clock import db_now
from flashsale.models import InventoryEvent, Order, Product
from tests.line_buyers import buyer_in_line_behind, take_the_line
from tests.live_server import wait_until
from tests.shop import reset


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory):
    return tmp_path_factory.mktemp("line-sqlite") / "flashsale.db"


@pytest.fixture(scope="module")
def lite_app(sqlite_path):
    """An app on its own SQLite file (migrated) and the test Redis."""
    application = create_app(TestConfig, SQLALCHEMY_DATABASE_URI=f"sqlite:///{sqlite_path}")
    with application.app_context():
        upgrade()
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def other_process(sqlite_path, lite_app):
    """A second app on the same SQLite file: another web process, with its own engine and combiner."""
    application = create_app(TestConfig, SQLALCHEMY_DATABASE_URI=f"sqlite:///{sqlite_path}")
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def lite(lite_app):
    """The SQLite app with empty tables and an empty test Redis database."""
    with lite_app.app_context():
        reset()
        db.session.remove()
    yield lite_app
    catalog.forget()


def add_product(app, slug="ps5", total_stock=5, max_per_customer=1):
    with app.app_context():
        starts = datetime.now(timezone.utc) - timedelta(minutes=1)
        product = Product(slug=slug, name=slug.upper(), description="", price_cents=100,
                          total_stock=total_stock, max_per_customer=max_per_customer,
                          sale_starts_at=starts, sale_ends_at=starts + timedelta(hours=1))
        db.session.add(product)
        db.session.commit()
        product_id = product.id
        db.session.remove()
        return product_id


def count(app, model):
    with app.app_context():
        total = db.session.execute(select(func.count()).select_from(model)).scalar_one()
        db.session.remove()
        return total


def buy(app, outcomes, email, quantity=1, key=None, policy=None, calls=None, slug="ps5"):
    """Place one hold in this thread, recording the PlacedHold or the refusal under `email`/`key`."""
    with app.app_context():
        try:
            placed = holds.place_hold(
                db.session, redis_store.client, slug, email, quantity,
                policy or holds.HoldPolicy(lock_wait_ms=10_000), key,
                on_committed=(lambda _pipe, ids, _: calls.append(list(ids))) if calls is not None else None)
            outcomes.append((email, key, quantity, placed))
        except (SoldOut, LimitExceeded, IdempotencyMismatch, LockBusy) as refusal:
            outcomes.append((email, key, quantity, refusal))
        finally:
            db.session.remove()


def test_the_quick_start_places_holds_through_the_line(lite, monkeypatch):
    """No second algorithm: SQLite's holds go through the batch transaction the line serves."""
    add_product(lite)
    served = []
    real_serve = batches.serve
    monkeypatch.setattr(batches, "serve", lambda *args, **kw: served.append(args[3]) or real_serve(*args, **kw))
    outcomes = []
    buy(lite, outcomes, "ann@x.io")
    assert outcomes[0][3].created and [len(batch) for batch in served] == [1]
    with lite.app_context():
        assert isinstance(placement.batch_transaction(db.engine), placement.SQLiteBatchTransaction)
        assert audit(db.session) == []
        db.session.remove()


def test_a_driver_error_inside_the_batch_comes_out_as_sqlalchemys_and_releases_the_lock(lite, sqlite_path):
    """What the app's 503 handler catches is SQLAlchemy's OperationalError, whichever layer raised it."""
    from sqlalchemy.exc import OperationalError

    with lite.app_context():
        engine = db.engine
    with pytest.raises(OperationalError), placement.SQLiteBatchTransaction(engine) as transaction:
        transaction.lock_and_read([1], set(), set())
        raise sqlite3.OperationalError("disk I/O error")  # as from a pause hook talking to the driver
    other = sqlite3.connect(sqlite_path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the writer lock was let go
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_a_herd_of_threads_gets_exactly_the_stock_in_holds_and_batches_form(lite, monkeypatch):
    """40 threads race for 7 units. The first holder waits, under the writer lock, until others have
    joined the line, so later holders serve batches of several buyers in one transaction."""
    product_id = add_product(lite, total_stock=7)
    with lite.app_context():
        redis = redis_store.client
        # The sale's details are cached before the race, as under a real herd: a buyer reading them
        # would wait for the writer lock the first holder keeps on purpose.
        catalog.sale_info(db.session, "ps5")
        db.session.remove()
    first = []

    def hold_the_writer_lock_until_a_line_forms(_product_id, email):
        if not first:
            first.append(email)
            wait_until(lambda: redis.llen(keys.batch_queue(product_id)) >= 5, 10, interval=0.005,
                       message="five buyers in line")

    monkeypatch.setattr(faults, "after_row_lock", hold_the_writer_lock_until_a_line_forms)
    outcomes, calls = [], []
    start = threading.Barrier(40)

    def racer(n):
        start.wait(10)
        buy(lite, outcomes, f"buyer{n}@x.io", calls=calls)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    created = [placed for _, _, _, placed in outcomes if not isinstance(placed, Exception)]
    refused = [placed for _, _, _, placed in outcomes if isinstance(placed, Exception)]
    assert len(outcomes) == 40
    assert len(created) == 7 and all(placed.created for placed in created)
    assert {type(refusal) for refusal in refused} == {SoldOut}
    assert count(lite, Order) == 7 and count(lite, InventoryEvent) == 7
    assert sorted(i for ids in calls for i in ids) == sorted(p.hold.id for p in created)
    assert max(len(ids) for ids in calls) > 1, f"every transaction served one buyer: {calls}"
    with lite.app_context():
        assert audit(db.session) == []
        db.session.remove()


def test_a_batch_holds_the_writer_lock_from_its_read_to_its_commit(lite, sqlite_path, monkeypatch):
    """BEGIN IMMEDIATE is SQLite's FOR UPDATE: while a batch reads and decides, no other writer starts."""
    add_product(lite)
    attempts = []

    def try_to_write(_product_id, _email):
        other = sqlite3.connect(sqlite_path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            attempts.append("began")
            other.execute("ROLLBACK")
        except sqlite3.OperationalError as refusal:
            attempts.append(str(refusal))
        finally:
            other.close()

    monkeypatch.setattr(faults, "after_row_lock", try_to_write)
    outcomes = []
    buy(lite, outcomes, "ann@x.io")
    assert outcomes[0][3].created
    assert attempts == ["database is locked"]


def test_the_clock_is_read_once_the_writer_lock_is_granted(lite, sqlite_path):
    """SQLite's 'now' (stock reads, the audit, conditional updates) is read after BEGIN IMMEDIATE: never
    older than a commit the transaction sees (else a hold that lapsed meanwhile would count twice)."""
    writer = sqlite3.connect(sqlite_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    calling, seen = threading.Event(), {}

    def read_the_clock():
        with lite.app_context():
            calling.set()
            seen["now"] = db_now(db.session)
            db.session.remove()

    reader = threading.Thread(target=read_the_clock)
    reader.start()
    try:
        assert calling.wait(5)
        time.sleep(0.1)  # staging a writer busy for 100 ms, not waiting for the reader
        committed_at = datetime.now(timezone.utc)
        writer.execute("COMMIT")
    finally:
        writer.close()
        reader.join(10)
    assert seen["now"] >= committed_at


def test_a_lapsed_redis_lock_cannot_oversell_because_the_writer_lock_decides(lite, other_process,
                                                                             monkeypatch):
    """The first holder stalls under the writer lock past its Redis lock's TTL; the second, in another
    process, takes the lapsed Redis lock, but its BEGIN IMMEDIATE waits for the first commit, and it
    sees the hold."""
    product_id = add_product(lite, total_stock=1)
    policy = holds.HoldPolicy(lock_ttl_ms=100, lock_wait_ms=5000)
    second_is_locking = threading.Event()
    log = []
    real_lock_and_read = placement.SQLiteBatchTransaction.lock_and_read
    real_insert = placement.SQLiteBatchTransaction.insert_and_commit

    def lock_and_read(self, *args):
        if threading.current_thread().name == "second":
            second_is_locking.set()
        sale = real_lock_and_read(self, *args)
        log.append((threading.current_thread().name, "read"))
        return sale

    def insert_and_commit(self, *args):
        log.append((threading.current_thread().name, "committing"))
        real_insert(self, *args)

    def stall(_product_id, email):
        if email == "first@x.io":
            assert second_is_locking.wait(10), "the second buyer never took the lapsed Redis lock"

    monkeypatch.setattr(placement.SQLiteBatchTransaction, "lock_and_read", lock_and_read)
    monkeypatch.setattr(placement.SQLiteBatchTransaction, "insert_and_commit", insert_and_commit)
    monkeypatch.setattr(faults, "after_row_lock", stall)
    outcomes = []
    first = threading.Thread(target=buy, args=(lite, outcomes, "first@x.io", 1, None, policy), name="first")
    first.start()
    with lite.app_context():
        redis = redis_store.client
    wait_until(lambda: redis.exists(keys.lock(product_id)), 5, interval=0.005, message="the first holder")
    second = threading.Thread(target=buy, args=(other_process, outcomes, "second@x.io", 1, None, policy),
                              name="second")
    second.start()
    first.join(15)
    second.join(15)
    results = {email: placed for email, _, _, placed in outcomes}
    assert results["first@x.io"].created
    assert isinstance(results["second@x.io"], SoldOut)
    assert log == [("first", "read"), ("first", "committing"), ("second", "read"), ("second", "committing")]
    assert count(lite, Order) == 1


def _join_in_order(lite, product_id, buyers, policy, outcomes, calls):
    """Start each buyer only once the one before it is in the line, so the line's order is theirs."""
    threads = []
    with lite.app_context():
        redis = redis_store.client
    for n, (email, quantity, key) in enumerate(buyers, start=1):
        thread = threading.Thread(target=buy, args=(lite, outcomes, email, quantity, key, policy, calls))
        thread.start()
        threads.append(thread)
        wait_until(lambda n=n: redis.llen(keys.batch_queue(product_id)) == n, 10, interval=0.002,
                   message=f"buyer {n} in line")
    return threads


def test_limits_and_idempotency_keys_are_decided_inside_one_batch(lite):
    """Seven buyers wait behind a lock the test holds; one holder serves them all in one transaction."""
    product_id = add_product(lite, total_stock=10, max_per_customer=2)
    policy = holds.HoldPolicy(lock_wait_ms=10_000)
    buyers = [("ann@x.io", 1, None), ("ann@x.io", 1, None), ("ann@x.io", 1, None),  # limit 2
              ("kim@x.io", 1, "key-1"), ("kim@x.io", 1, "key-1"), ("kim@x.io", 2, "key-1"),
              ("lee@x.io", 2, None)]
    outcomes, calls = [], []
    with lite.app_context():
        holder = locks.ProductLock(redis_store.client, product_id, ttl_ms=30_000, wait_ms=0).acquire()
    try:
        threads = _join_in_order(lite, product_id, buyers, policy, outcomes, calls)
    finally:
        holder.release()
    for thread in threads:
        thread.join(15)
    assert len(outcomes) == 7 and len(calls) == 1 and len(calls[0]) == 4  # one batch, four new holds

    def of(email, key=None, quantity=None):
        return [placed for e, k, q, placed in outcomes
                if e == email and k == key and (quantity is None or q == quantity)]

    ann = of("ann@x.io")
    assert sum(not isinstance(p, Exception) and p.created for p in ann) == 2
    assert [p.details for p in ann if isinstance(p, LimitExceeded)] == [{"limit": 2, "holding": 2}]
    kim = of("kim@x.io", "key-1", 1)
    assert sorted(p.created for p in kim) == [False, True]  # the second is a replay of the first
    assert kim[0].hold.id == kim[1].hold.id
    assert [type(p) for p in of("kim@x.io", "key-1", 2)] == [IdempotencyMismatch]
    assert of("lee@x.io")[0].created and of("lee@x.io")[0].hold.quantity == 2
    assert count(lite, Order) == 4
    with lite.app_context():
        assert stock.stock_levels(db.session)[product_id].available == 10 - 5
        assert audit(db.session) == []
        db.session.remove()


def test_a_hold_committed_for_a_buyer_who_was_never_answered_is_found_under_the_writer_lock(
        lite, monkeypatch):
    """A holder takes the buyer's request, reads the clock in time, then stalls and never answers (as
    when Redis dies mid-line): past its deadline the buyer waits for the writer lock, finds its hold
    in the database and gets it (201), not a false 503."""
    product_id = add_product(lite)
    policy = holds.HoldPolicy(lock_ttl_ms=200, lock_wait_ms=600)
    buyer_past_deadline = threading.Event()
    real_wait = batches.wait_until_past
    real_insert = placement.SQLiteBatchTransaction.insert_and_commit

    def wait_then_say_so(session, epoch):
        real_wait(session, epoch)
        buyer_past_deadline.set()  # next: BEGIN IMMEDIATE, which waits for the stalled holder

    def stalled_insert(self, *args):
        assert buyer_past_deadline.wait(10), "the buyer never settled with the database"
        return real_insert(self, *args)

    monkeypatch.setattr(batches, "wait_until_past", wait_then_say_so)
    monkeypatch.setattr(placement.SQLiteBatchTransaction, "insert_and_commit", stalled_insert)
    outcome = {}
    with lite.app_context():
        redis = redis_store.client
        holder = locks.ProductLock(redis, product_id, ttl_ms=30_000, wait_ms=0).acquire()
        buyer = buyer_in_line_behind(lite, "ps5", policy, outcome)
        request = take_the_line(redis, product_id)
        answers = batches.serve(db.session, redis, product_id, [request], 120, "0")  # never sent
        db.session.remove()
        buyer.join(15)
        holder.release()
    assert isinstance(answers[request.ticket], batches.Created)
    assert "placed" in outcome and outcome["placed"].hold.id == request.hold_id
    assert outcome["placed"].created
    assert count(lite, Order) == 1


def test_a_request_taken_after_its_deadline_is_refused_and_its_buyer_told_503(lite):
    """A holder that reaches the database after the buyer's deadline (by SQLite's clock, this
    machine's) refuses the request, so the buyer's 503, settled with the database, is true."""
    product_id = add_product(lite)
    policy = holds.HoldPolicy(lock_ttl_ms=200, lock_wait_ms=300)
    outcome = {}
    with lite.app_context():
        redis = redis_store.client
        holder = locks.ProductLock(redis, product_id, ttl_ms=30_000, wait_ms=0).acquire()
        buyer = buyer_in_line_behind(lite, "ps5", policy, outcome)
        request = take_the_line(redis, product_id)
        wait_until(lambda: datetime.now(timezone.utc).timestamp() > request.deadline, 5, interval=0.01,
                   message="the deadline")
        answers = batches.serve(db.session, redis, product_id, [request], 120, "0")
        db.session.remove()
        buyer.join(15)
        holder.release()
    assert isinstance(answers[request.ticket], LockBusy)
    assert "refused" in outcome
    assert count(lite, Order) == 0


def test_a_busy_database_answers_503_changes_nothing_and_keeps_no_lock(lite, sqlite_path):
    """Another writer holds SQLite's lock past the busy timeout: the batch's error is SQLAlchemy's
    OperationalError, the API answers 503, and the app's connection does not keep the lock."""
    add_product(lite, max_per_customer=5)
    with lite.app_context():
        engine = db.engine

    def short_busy_timeout(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA busy_timeout=100")

    event.listen(engine, "connect", short_busy_timeout)
    engine.dispose()  # new connections get the short timeout
    client = lite.test_client()
    other = sqlite3.connect(sqlite_path, timeout=0, isolation_level=None)
    try:
        first = client.post("/api/products/ps5/holds", json={"email": "ann@x.io"})
        assert first.status_code == 201  # and the sale's details are cached
        other.execute("BEGIN IMMEDIATE")
        busy = client.post("/api/products/ps5/holds", json={"email": "ann@x.io"})
        other.execute("ROLLBACK")
        assert busy.status_code == 503 and busy.json["error"]["code"] == "unavailable"
        assert busy.headers["Retry-After"]
        other.execute("BEGIN IMMEDIATE")  # the app let go of the writer lock
        other.execute("ROLLBACK")
        again = client.post("/api/products/ps5/holds", json={"email": "ann@x.io"})
        assert again.status_code == 201
    finally:
        other.close()
        event.remove(engine, "connect", short_busy_timeout)
        engine.dispose()
    assert count(lite, Order) == 2 and count(lite, InventoryEvent) == 2
