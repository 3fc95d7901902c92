"""Several products' batches in one transaction (combining.py): rounds, decisions, and what must not wait."""

import threading
from datetime import datetime, timezone

import psycopg2
import pytest
from sqlalchemy import func, select

from config import TestConfig
from flashsale.errors import IdempotencyMismatch, LimitExceeded, NotFound, SoldOut
from flashsale.extensions import db, redis_store
from flashsale.inventory import batches, combining, holds, placement, soldout
from flashsale.inventory.audit import audit
from flashsale.models import InventoryEvent, Order
from tests.live_server import wait_until


class Item:
    def __init__(self, product_id, name):
        self.product_id, self.name = product_id, name


def test_items_handed_in_during_a_round_are_served_together_by_the_next():
    combiner = combining.Combiner()
    first_round_started, release_first_round = threading.Event(), threading.Event()
    rounds, outcomes = [], {}

    def serve_together(items):
        rounds.append(sorted(item.name for item in items))
        if items[0].name == "a":
            first_round_started.set()
            assert release_first_round.wait(10)
        return [f"served {item.name}" for item in items]

    def hand_in(item):
        outcomes[item.name] = combiner.run(item, serve_together)

    first = threading.Thread(target=hand_in, args=(Item(1, "a"),))
    first.start()
    assert first_round_started.wait(10)
    others = [threading.Thread(target=hand_in, args=(Item(n, name),)) for n, name in [(2, "b"), (3, "c")]]
    for thread in others:
        thread.start()
    wait_until(lambda: len(combiner._waiting) == 2, 10, interval=0.002, message="two items waiting")
    # A second item of a product in the round being served goes alone, at once, not after the round.
    again = threading.Thread(target=hand_in, args=(Item(1, "a again"),))
    again.start()
    again.join(10)
    assert outcomes == {"a again": "served a again"}
    release_first_round.set()
    for thread in [first, *others]:
        thread.join(10)
    assert rounds == [["a"], ["a again"], ["b", "c"]]
    assert outcomes == {name: f"served {name}" for name in ["a", "a again", "b", "c"]}
    assert not combiner._busy and combiner._waiting == [] and combiner._products == set()


def test_a_rounds_failure_is_raised_in_every_thread_it_served():
    combiner = combining.Combiner()
    started, go = threading.Event(), threading.Event()
    errors = []

    def serve_together(items):
        if not started.is_set():
            started.set()
            assert go.wait(10)
            return ["ok"]
        raise RuntimeError(f"down for {len(items)}")

    def hand_in(product_id):
        try:
            combiner.run(Item(product_id, product_id), serve_together)
        except RuntimeError as error:
            errors.append(str(error))

    first = threading.Thread(target=hand_in, args=(0,))
    first.start()
    assert started.wait(10)
    waiting = [threading.Thread(target=hand_in, args=(n,)) for n in (1, 2, 3)]
    for thread in waiting:
        thread.start()
    wait_until(lambda: len(combiner._waiting) == 3, 10, interval=0.002, message="three items waiting")
    go.set()
    for thread in [first, *waiting]:
        thread.join(10)
    assert errors == ["down for 3"] * 3
    assert not combiner._busy and combiner._waiting == [] and combiner._products == set()


def now_request(n, email=None, quantity=1, key=None, digest=None):
    now = datetime.now(timezone.utc)  # deadlines are judged by the database clock
    return batches.Request(f"t{n}", email or f"b{n}@x.io", quantity, key, digest, now.timestamp() + 60,
                           f"hold-{n}")


def test_one_transaction_decides_each_products_batch_against_its_own_stock(session, redis, make_product):
    one_left = make_product(slug="one-left", total_stock=1)
    plenty = make_product(slug="plenty", total_stock=10, max_per_customer=2)
    engine = session.get_bind()
    outcomes = batches._serve_together(engine, [
        batches.Batch(one_left, [now_request(0), now_request(1)], 120),
        batches.Batch(plenty, [now_request(2, "a@x.io"), now_request(3, "a@x.io"),
                               now_request(4, "a@x.io")], 120),
        batches.Batch(999_999, [now_request(5)], 120),
    ])
    (first, first_mark), (second, second_mark), (missing, _) = outcomes
    assert isinstance(first["t0"], batches.Created) and isinstance(first["t1"], SoldOut)
    assert first_mark is not None and second_mark is None  # only the product that ran out is marked
    assert [type(second[f"t{n}"]) for n in (2, 3, 4)] == [batches.Created, batches.Created, LimitExceeded]
    assert isinstance(missing["t5"], NotFound)
    rows = dict(session.execute(select(Order.id, Order.product_id)).all())
    assert rows == {"hold-0": one_left, "hold-2": plenty, "hold-3": plenty}
    events = dict(session.execute(select(InventoryEvent.order_id, InventoryEvent.product_id)).all())
    assert events == rows
    assert audit(session) == []


def test_one_key_in_two_products_batches_makes_one_hold(session, make_product):
    first, second = make_product(slug="first"), make_product(slug="second")
    outcomes = batches._serve_together(session.get_bind(), [
        batches.Batch(first, [now_request(0, key="k", digest="d-first")], 120),
        batches.Batch(second, [now_request(1, key="k", digest="d-second")], 120),
    ])
    assert isinstance(outcomes[0][0]["t0"], batches.Created)
    assert isinstance(outcomes[1][0]["t1"], IdempotencyMismatch)
    assert session.execute(select(func.count()).select_from(Order)).scalar_one() == 1
    assert audit(session) == []


def test_threads_buying_many_products_share_transactions_and_never_oversell(app, make_product, monkeypatch):
    """Real threads of one process, one buyer each, three units and eight buyers per product."""
    products = [make_product(slug=f"p{n}", total_stock=3) for n in range(12)]
    products_per_commit = []
    with app.app_context():
        transaction_class = type(placement.batch_transaction(db.engine))
    real_insert = transaction_class.insert_and_commit

    def counting_insert(self, holds_, now):
        products_per_commit.append(len({hold[1] for hold in holds_}))
        return real_insert(self, holds_, now)

    monkeypatch.setattr(transaction_class, "insert_and_commit", counting_insert)
    start = threading.Barrier(len(products) * 8)
    results = []

    def buy(product_id, n):
        with app.app_context():
            start.wait(10)
            try:
                results.append(holds.place_hold(db.session, redis_store.client, product_id, f"b{n}@x.io",
                                                policy=holds.HoldPolicy(lock_wait_ms=10_000)).created)
            except SoldOut:
                results.append(False)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=buy, args=(product_id, n))
               for product_id in products for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [False] * 60 + [True] * 36
    with app.app_context():
        per_product = dict(db.session.execute(
            select(Order.product_id, func.count()).group_by(Order.product_id)).all())
        assert per_product == {product_id: 3 for product_id in products}
        assert audit(db.session) == []
        db.session.remove()
    assert max(products_per_commit) >= 2, products_per_commit  # rounds did combine products


@pytest.mark.postgres("it stages a row lock held by another PostgreSQL transaction")
def test_a_product_whose_row_is_locked_elsewhere_does_not_hold_up_the_others(session, redis, make_product):
    locked, free = make_product(slug="locked"), make_product(slug="free")
    blocker = psycopg2.connect(TestConfig.SQLALCHEMY_DATABASE_URI.replace("postgresql+psycopg2://",
                                                                          "postgresql://"))
    engine = session.get_bind()
    outcome = {}
    try:
        cursor = blocker.cursor()
        cursor.execute("SELECT 1 FROM products WHERE id = %s FOR UPDATE", (locked,))
        worker = threading.Thread(target=lambda: outcome.update(served=batches._serve_together(engine, [
            batches.Batch(locked, [now_request(0)], 120), batches.Batch(free, [now_request(1)], 120)])))
        worker.start()

        def free_hold_committed():
            cursor.execute("SELECT count(*) FROM orders WHERE id = 'hold-1'")
            return cursor.fetchone()[0] == 1

        # The free product's hold commits while the other row is still locked (after SHARED_LOCK_WAIT).
        wait_until(free_hold_committed, 10, interval=0.01, message="the free product's hold")
        assert worker.is_alive()  # the locked product's batch still waits for its row
    finally:
        blocker.rollback()
        blocker.close()
    worker.join(10)
    (locked_answers, _), (free_answers, _) = outcome["served"]
    assert isinstance(locked_answers["t0"], batches.Created) and isinstance(free_answers["t1"], batches.Created)
    assert not soldout.is_marked(redis, free)
    assert audit(session) == []
