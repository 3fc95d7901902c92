"""Acceptances and captures of one product at once, on PostgreSQL: no deadlock between them.

Accepting locks the product row before the hold's; settling a capture holds the hold's row while its
ledger insert checks the product (FOR KEY SHARE). With the acceptance's lock FOR UPDATE the two waited for
each other: a confirm answered 503, or a capture sat unsettled until reconciliation (seen in
bench/confirmations.py; the sweeper's EXPIRED inserts did the same). FOR NO KEY UPDATE lets the check by.
Real threads, real row locks.
"""

import threading

import pytest
from sqlalchemy.exc import OperationalError

from flashsale.extensions import db, redis_store
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory import holds
from flashsale.inventory.audit import audit
from flashsale.inventory.confirmation import accept_confirmation
from flashsale.inventory.payments import take_payment

pytestmark = pytest.mark.postgres("it stages PostgreSQL row locks (SQLite has one writer lock)")
HOLDS, ACCEPTORS, SETTLERS = 240, 8, 4


def test_accepting_and_settling_holds_of_one_product_at_once_never_deadlock(app, make_product, policy):
    make_product(slug="hot", total_stock=HOLDS)
    with app.app_context():
        ids = [holds.place_hold(db.session, redis_store.client, "hot", f"u{i}@x.io", 1, policy).hold.id
               for i in range(HOLDS)]
        db.session.remove()
    accepted, failures, lock = [], [], threading.Lock()
    accepting_done = threading.Event()

    def accept(chunk):
        with app.app_context():
            for hold_id in chunk:
                try:
                    accept_confirmation(db.session, hold_id, redis_store.client)
                    with lock:
                        accepted.append(hold_id)
                except OperationalError as failure:
                    db.session.rollback()
                    failures.append(("accept", str(failure.orig).splitlines()[0]))
            db.session.remove()

    def settle(start):
        with app.app_context():
            gateway, done = FakeGateway(db.engine), set()
            while True:
                finished = accepting_done.is_set()  # read first: then every acceptance is listed below
                with lock:
                    todo = [h for h in accepted[start::SETTLERS] if h not in done]
                for hold_id in todo:
                    try:
                        take_payment(db.session, redis_store.client, hold_id, gateway)
                    except OperationalError as failure:
                        db.session.rollback()
                        failures.append(("settle", str(failure.orig).splitlines()[0]))
                    done.add(hold_id)
                if finished and not todo:
                    break
            db.session.remove()

    acceptors = [threading.Thread(target=accept, args=(ids[i::ACCEPTORS],)) for i in range(ACCEPTORS)]
    settlers = [threading.Thread(target=settle, args=(i,)) for i in range(SETTLERS)]
    for thread in acceptors + settlers:
        thread.start()
    for thread in acceptors:
        thread.join(120)
    accepting_done.set()
    for thread in settlers:
        thread.join(120)
    assert failures == []
    with app.app_context():
        assert [str(b) for b in audit(db.session, FakeGateway(db.engine), 900)] == []
        db.session.remove()
