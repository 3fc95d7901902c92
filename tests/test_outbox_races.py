"""Racing the outbox: settling one capture twice at once, the last units confirmed at once, workers
taking due deliveries at once. Threads with their own sessions, started together by a barrier."""

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from flashsale.extensions import db, redis_store
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory import deliveries
from flashsale.inventory.confirmation import accept_confirmation, payment_key
from flashsale.inventory.deliveries import RetrySchedule
from flashsale.inventory.payments import settle
from flashsale.models import WebhookEvent

HOLDS = 12


def in_threads(app, jobs):
    """Run every job on its own thread with its own session, all released at once; their results."""
    barrier = threading.Barrier(len(jobs))

    def run(job):
        with app.app_context():
            try:
                barrier.wait(timeout=30)
                return job(db.session, redis_store.client)
            finally:
                db.session.remove()

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(run, jobs))


def test_two_settles_of_each_capture_at_once_write_one_order_confirmed_each_and_one_sold_out(
        app, session, redis, shop, make_product):
    make_product(total_stock=HOLDS, max_per_customer=1)
    ids = [shop.place(f"r{i}@x.io").id for i in range(HOLDS)]
    charges = {}
    for hold_id in ids:
        accept_confirmation(session, hold_id)
        session.commit()  # the gateway is called outside any transaction: on SQLite one holds the only write lock
        charges[hold_id] = FakeGateway(db.engine).charge(payment_key(hold_id), 49999, "r@x.io", hold_id)

    def settler(hold_id):
        return lambda s, r: settle(s, r, hold_id, charges[hold_id], FakeGateway(db.engine)).outcome

    outcomes = in_threads(app, [settler(hold_id) for hold_id in ids for _ in range(2)])
    assert sorted(outcomes) == ["confirmed"] * HOLDS + ["skipped"] * HOLDS
    found = dict(session.execute(select(WebhookEvent.type, func.count()).group_by(WebhookEvent.type)).all())
    per_hold = session.execute(select(WebhookEvent.hold_id, func.count()).where(WebhookEvent.hold_id.is_not(None))
                               .group_by(WebhookEvent.hold_id)).all()
    session.commit()
    assert found == {"order.confirmed": HOLDS, "sale.sold_out": 1}
    assert sorted(hold_id for hold_id, n in per_hold if n == 1) == sorted(ids)


def test_workers_taking_due_deliveries_at_once_never_take_one_twice(app, session, redis, shop, make_product):
    make_product(total_stock=HOLDS, max_per_customer=1)
    for i in range(HOLDS):
        hold_id = shop.place(f"d{i}@x.io").id
        accept_confirmation(session, hold_id)
        session.commit()  # the gateway is called outside any transaction: on SQLite one holds the only write lock
        charge = FakeGateway(db.engine).charge(payment_key(hold_id), 49999, "d@x.io", hold_id)
        settle(session, redis, hold_id, charge, FakeGateway(db.engine))
    endpoints = ["http://a.example/h", "http://b.example/h"]
    owed = deliveries.fan_out(session, endpoints) * len(endpoints)
    assert owed == (HOLDS + 1) * 2  # every order.confirmed and the sale.sold_out, at both endpoints

    def taker(s, r):
        taken = []
        while batch := deliveries.take_due(s, RetrySchedule(), limit=3):
            taken += [attempt.delivery_id for attempt in batch]
        return taken

    taken = [delivery for batch in in_threads(app, [taker] * 4) for delivery in batch]
    assert len(taken) == owed and len(set(taken)) == owed
