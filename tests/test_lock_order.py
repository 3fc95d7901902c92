"""Every transaction takes a product's row lock before any of its holds' rows: no lock-order deadlock.

A batch of holds and an accepted confirmation lock the product's row first, then write a hold's row.
A transition that wrote the hold's row first and only then touched the product (every ledger event's
foreign key takes a KEY SHARE lock on it; a confirmation's counter updates it) could meet one of them
halfway: each waits for the other, PostgreSQL aborts one, and a shopper gets a 503 for nothing. Each
test here holds the product's row lock in another transaction, lets the transition start, then has that
transaction write the hold's row, exactly as accept_confirmation does, and asserts nobody deadlocked.
"""

import threading

import psycopg2
import pytest
from sqlalchemy import select

from config import TestConfig
from flashsale.extensions import db, redis_store
from flashsale.gateways import CAPTURED, Charge
from flashsale.inventory import confirmation, expiry, holds, payments
from flashsale.models import Order
from tests.live_server import wait_until

pytestmark = pytest.mark.postgres("it stages PostgreSQL's row locks (SQLite has one writer lock)")

DSN = TestConfig.SQLALCHEMY_DATABASE_URI.replace("postgresql+psycopg2://", "postgresql://")


def race_the_product_lock(app, product_id, hold_id, transition):
    """Hold the product's row lock, start `transition` in a thread, then write the hold's row in the
    lock holder's transaction; returns (the transition's result or error, the holder's error)."""
    holder = psycopg2.connect(DSN)
    outcome = {}
    try:
        cursor = holder.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        holder_pid = cursor.fetchone()[0]
        cursor.execute("SELECT 1 FROM products WHERE id = %s FOR UPDATE", (product_id,))

        def run():
            with app.app_context():
                try:
                    outcome["result"] = transition(db.session, redis_store.client)
                except Exception as error:  # noqa: BLE001 - the test reports it
                    outcome["error"] = error
                finally:
                    db.session.remove()

        thread = threading.Thread(target=run)
        thread.start()
        wait_until(lambda: _waiting_for_a_lock(holder, holder_pid), 10,
                   message="the transition to wait for the product's row lock")
        holder_error = None
        try:
            cursor.execute("SET LOCAL lock_timeout = '10s'")
            cursor.execute("UPDATE orders SET status = status WHERE id = %s", (hold_id,))
            holder.commit()
        except psycopg2.Error as error:
            holder_error = error
            holder.rollback()
        thread.join(30)
        assert not thread.is_alive()
        return outcome.get("result", outcome.get("error")), holder_error
    finally:
        holder.close()


def _waiting_for_a_lock(holder, holder_pid):
    """True once another backend of this database waits for a lock (the transition, behind ours)."""
    with psycopg2.connect(DSN) as watcher, watcher.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock' AND pid <> %s", (holder_pid,))
        waiting = cursor.fetchone()[0] > 0
    watcher.close()
    return waiting


@pytest.fixture
def held(ctx, shop, make_product):
    """A product and one PENDING hold of it: (product id, hold id)."""
    product_id = make_product(slug="ps5", total_stock=5)
    hold_id = shop.place("ann@x.io").id
    db.session.commit()
    return product_id, hold_id


def test_a_release_never_deadlocks_with_a_confirmation_of_the_same_product(app, held):
    product_id, hold_id = held
    result, holder_error = race_the_product_lock(
        app, product_id, hold_id, lambda session, redis: holds.release_hold(session, redis, hold_id))
    assert holder_error is None and not isinstance(result, Exception), (result, holder_error)
    assert result.status == "RELEASED"


def test_an_expiry_never_deadlocks_with_a_confirmation_of_the_same_product(app, held, shop):
    product_id, hold_id = held
    shop.lapse(hold_id)
    result, holder_error = race_the_product_lock(
        app, product_id, hold_id, lambda session, redis: expiry.expire_hold(session, redis, hold_id))
    assert holder_error is None and result is True, (result, holder_error)


def test_the_sweeper_never_deadlocks_with_a_confirmation_of_the_same_product(app, held, shop):
    product_id, hold_id = held
    shop.lapse(hold_id)
    result, holder_error = race_the_product_lock(
        app, product_id, hold_id, lambda session, redis: expiry.sweep_expired_holds(session, redis))
    assert holder_error is None and result == 1, (result, holder_error)


def test_a_captured_payment_never_deadlocks_with_a_confirmation_of_the_same_product(app, held, ctx):
    product_id, hold_id = held
    confirmation.accept_confirmation(db.session, hold_id)
    db.session.remove()
    charge = Charge("ch_1", confirmation.payment_key(hold_id), CAPTURED, 49999, hold_id)
    result, holder_error = race_the_product_lock(
        app, product_id, hold_id, lambda session, redis: payments.settle(session, redis, hold_id, charge, None))
    assert holder_error is None and not isinstance(result, Exception), (result, holder_error)
    assert result.status == "CONFIRMED"
    assert db.session.execute(select(Order.status).where(Order.id == hold_id)).scalar_one() == "CONFIRMED"
