"""The stock snapshot follows every kind of stock movement, on the database and Redis.

Each test builds the snapshot first, moves the stock through the domain, then reads the snapshot with
rebuilds turned off (max_age infinite) and compares it with the database's derived stock: so what it
proves is that the movement itself updated the snapshot, not that a rebuild repaired it.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flashsale import keys
from flashsale.extensions import db
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory import catalog, expiry, holds, movements, snapshot
from flashsale.inventory.confirmation import accept_confirmation, payment_key
from flashsale.inventory.payments import PaymentPolicy, reconcile_payment, settle, take_payment
from flashsale.inventory.stock import stock_levels
from tests.live_server import wait_until

NEVER = float("inf")  # max_age: never rebuild, show only what the movements wrote
PAST_FINAL = PaymentPolicy(timeout_seconds=0, final_seconds=0)


def seen(session, redis, pid):
    """(available, confirmed, paying, held) as the snapshot shows them, without any rebuild."""
    snap = snapshot.read(session, redis, pid, max_age=NEVER)
    session.rollback()  # a rebuild read the database: on SQLite an open transaction holds the writer lock
    return snap.available, snap.confirmed, snap.paying, snap.held


def truth(session, pid):
    level = stock_levels(session, [pid])[pid]
    session.rollback()
    return level.available, level.confirmed, level.paying, level.held


def rebuilds(redis):
    return int(redis.get(keys.metrics("snapshot_rebuilds")) or 0)


def test_a_batch_of_holds_racing_for_the_lock_moves_the_snapshot(app, session, redis, make_product, policy):
    pid = make_product(total_stock=50)
    assert seen(session, redis, pid) == (50, 0, 0, 0)
    built = rebuilds(redis)
    start = threading.Barrier(30)

    def buyer(i):
        with app.app_context():
            start.wait()
            try:
                return holds.place_hold(db.session, redis, "ps5", f"b{i}@x.io", 1, policy).created
            finally:
                db.session.remove()

    with ThreadPoolExecutor(30) as pool:
        assert list(pool.map(buyer, range(30))) == [True] * 30
    assert seen(session, redis, pid) == truth(session, pid) == (20, 0, 0, 30)
    assert rebuilds(redis) == built  # the holds' own writes, not a recount


def test_a_release_gives_the_units_back_in_the_snapshot(session, redis, shop, make_product):
    pid = make_product(total_stock=3, max_per_customer=2)
    held = shop.place(quantity=2)
    assert seen(session, redis, pid) == (1, 0, 0, 2)
    holds.release_hold(session, redis, held.id)
    assert seen(session, redis, pid) == truth(session, pid) == (3, 0, 0, 0)


def test_an_accepted_confirmation_moves_units_from_held_to_paying(session, redis, shop, make_product):
    pid = make_product(total_stock=3)
    held = shop.place()
    seen(session, redis, pid)
    accept_confirmation(session, held.id, redis)
    assert seen(session, redis, pid) == truth(session, pid) == (2, 0, 1, 0)


def test_a_captured_payment_moves_units_from_paying_to_confirmed(session, redis, shop, make_product):
    pid = make_product(total_stock=3)
    held = shop.place()
    seen(session, redis, pid)
    accept_confirmation(session, held.id, redis)
    assert take_payment(session, redis, held.id, FakeGateway(db.engine)).status == "CONFIRMED"
    assert seen(session, redis, pid) == truth(session, pid) == (2, 1, 0, 0)


def test_a_refused_payment_gives_the_units_back(session, redis, shop, make_product):
    pid = make_product(total_stock=3)
    held = shop.place("no+refuse@x.io")
    seen(session, redis, pid)
    accept_confirmation(session, held.id, redis)
    assert take_payment(session, redis, held.id, FakeGateway(db.engine)).status == "RELEASED"
    assert seen(session, redis, pid) == truth(session, pid) == (3, 0, 0, 0)


def test_a_refund_of_a_capture_for_a_hold_that_ended_otherwise_leaves_stock_as_it_is(
        session, redis, shop, make_product):
    pid = make_product(total_stock=3)
    held = shop.place("gone+down@x.io")
    seen(session, redis, pid)
    accept_confirmation(session, held.id, redis)

    class UnvoidableGateway(FakeGateway):
        def void(self, key):
            return None  # the void was accepted, but a charge was already in flight

    take_payment(session, redis, held.id, FakeGateway(db.engine))  # no answer: reconciliation settles it
    assert reconcile_payment(session, redis, held.id, UnvoidableGateway(db.engine), PAST_FINAL).status == "RELEASED"
    assert seen(session, redis, pid) == (3, 0, 0, 0)
    hold_id = held.id  # read before the commit expires it
    session.commit()  # the gateway is called outside any transaction: on SQLite one holds the only write lock
    late = FakeGateway(db.engine)._store(payment_key(hold_id), "captured", 49999, hold_id)
    assert settle(session, redis, held.id, late, FakeGateway(db.engine)).outcome == "refunded"
    assert seen(session, redis, pid) == truth(session, pid) == (3, 0, 0, 0)


def test_a_lapsed_hold_comes_back_at_read_time_and_its_expiry_job_changes_nothing(
        session, redis, shop, make_product):
    pid = make_product(total_stock=2)
    short = holds.HoldPolicy(hold_seconds=1, lock_ttl_ms=2000, lock_wait_ms=5000, max_quantity=10)
    held = shop.place(policy=short)
    assert seen(session, redis, pid) == (1, 0, 0, 1)
    # No job runs: the bucket lapses by Redis's clock within a second of the hold's expiry.
    deadline = held.hold_expires_at.timestamp() + 1.5
    wait_until(lambda: seen(session, redis, pid)[0] == 2, deadline - time.time(), interval=0.02,
               message="the lapsed hold's unit back in the snapshot")
    came_back = time.time()
    assert seen(session, redis, pid) == truth(session, pid) == (2, 0, 0, 0)
    assert held.hold_expires_at.timestamp() <= came_back
    assert expiry.expire_hold(session, redis, held.id)
    assert seen(session, redis, pid) == truth(session, pid) == (2, 0, 0, 0)


def test_a_live_hold_never_comes_back_early(session, redis, shop, make_product):
    pid = make_product(total_stock=1)
    held = shop.place(policy=holds.HoldPolicy(hold_seconds=2, lock_wait_ms=5000))
    while time.time() < held.hold_expires_at.timestamp() - 0.05:
        assert seen(session, redis, pid)[0] == 0
        time.sleep(0.02)  # sampling the snapshot every 20 ms until the expiry, not waiting for anything


def test_a_reseed_starts_the_snapshot_over(session, redis, ctx, shop):
    from flashsale.inventory import seeding

    scenario = seeding.load_scenario("ps5-drop")
    seeding.seed(session, redis, scenario)
    pid = catalog.find_product(session, "ps5").id
    shop.place("a@x.io", policy=holds.HoldPolicy())
    assert seen(session, redis, pid)[0] == 99
    seeding.reset(session, redis, scenario)
    assert not redis.exists(keys.stock_snapshot(pid))
    assert seen(session, redis, pid) == truth(session, pid) == (100, 0, 0, 0)


def test_a_lost_write_is_repaired_within_the_bound(session, redis, shop, make_product, monkeypatch):
    """A crash between commit and snapshot write: the next rebuild, at most MAX_AGE later, repairs it."""
    pid = make_product(total_stock=5)
    snapshot.read(session, redis, pid)
    monkeypatch.setattr(movements, "move_in", lambda *args: None)  # the batch's write never happens
    shop.place()
    committed = time.time()
    assert seen(session, redis, pid)[0] == 5  # the snapshot missed it ...
    wait_until(lambda: snapshot.read(session, redis, pid).available == 4,  # ... for a second at most
               snapshot.MAX_AGE_SECONDS + 0.5 - (time.time() - committed), interval=0.02,
               message="the rebuild to repair the snapshot")


def test_a_movement_on_a_missing_snapshot_leaves_it_missing_for_a_whole_rebuild(
        session, redis, shop, make_product):
    pid = make_product(total_stock=5)
    shop.place()
    assert not redis.exists(keys.stock_snapshot(pid))  # no half snapshot made of one movement
    assert seen(session, redis, pid) == truth(session, pid) == (4, 0, 0, 1)
