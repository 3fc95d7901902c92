"""The shop as tests see it (the `shop` fixture): place holds, let them lapse by the database clock, read
their status and ledger, on PostgreSQL and SQLite alike; and `reset`, which empties it between tests.

Every call runs in the test's own session when the test runs in the app's context (on SQLite a second
connection would wait for the writer lock the test's open transaction holds), else in a short-lived one.
Reads end their transaction (committing anything the test left pending), so a later request, server or
worker can write.
"""

from contextlib import contextmanager
from datetime import timedelta

from flask import current_app, has_app_context
from sqlalchemy import case, select, text, update

from flashsale.extensions import db, redis_store
from flashsale.inventory import catalog, holds, snapshot, stock
from flashsale.inventory.clock import db_now
from flashsale.models import InventoryEvent, Order, Payment

TABLES = ("webhook_deliveries", "webhook_events", "inventory_events", "payments", "orders", "products",
          "fake_gateway_charges")


class Shop:
    """One app's shop, as the tests drive and inspect it."""

    def __init__(self, app, policy):
        self.app, self.policy = app, policy

    @contextmanager
    def session(self):
        """The test's session when it runs in this app's context, else a fresh one, removed after."""
        if has_app_context() and current_app._get_current_object() is self.app:
            yield db.session
            return
        with self.app.app_context():
            try:
                yield db.session
            finally:
                db.session.remove()

    def place(self, email="a@x.io", quantity=1, slug="ps5", key=None, policy=None):
        """Place a hold through the domain, as a request would (the fixture's policy unless given); the Order."""
        with self.session() as session:
            return holds.place_hold(session, redis_store.client, slug, email, quantity, policy or self.policy,
                                    key).hold

    def lapse(self, *hold_ids):
        """Move the holds' expiry a second into the past by the database clock, recording nothing.

        A hold whose confirmation was accepted keeps an acceptance before its expiry (it is moved back
        when later): it was accepted while live, its clock stopped, and it keeps its units.
        """
        with self.session() as session:
            now = db_now(session)
            accepted = now - timedelta(seconds=2)
            session.execute(
                update(Order).where(Order.id.in_(hold_ids))
                .values(hold_expires_at=now - timedelta(seconds=1),
                        confirmation_requested_at=case(
                            (Order.confirmation_requested_at > accepted, accepted),
                            else_=Order.confirmation_requested_at))
                .execution_options(synchronize_session=False))
            session.commit()

    def status(self, hold_id):
        """The hold's stored status, read afresh."""
        return self.statuses([hold_id])[hold_id]

    def statuses(self, hold_ids):
        """{hold id: stored status}, read afresh."""
        with self.session() as session:
            found = dict(session.execute(select(Order.id, Order.status).where(Order.id.in_(hold_ids))).all())
            session.commit()
        return found

    def payment(self, hold_id):
        """The hold's Payment, read afresh (detached: its values stay readable)."""
        with self.session() as session:
            found = session.execute(select(Payment).where(Payment.order_id == hold_id)
                                    .execution_options(populate_existing=True)).scalar_one()
            session.expunge(found)
            session.commit()
        return found

    def events(self, hold_id):
        """The types of the hold's ledger events, oldest first."""
        return [kind for kind, _ in self.ledger(hold_id)]

    def ledger(self, hold_id):
        """[(type, metadata)] of the hold's ledger events, oldest first."""
        with self.session() as session:
            rows = session.execute(
                select(InventoryEvent.type, InventoryEvent.event_metadata)
                .where(InventoryEvent.order_id == hold_id).order_by(InventoryEvent.id)).all()
            session.commit()
        return [tuple(row) for row in rows]


def turn_back(session, columns, where, seconds):
    """Move `columns` (of one model) of the rows matching `where` `seconds` into the past, as if that much
    time went by; the caller commits. Row by row: SQLite stores times as text, with no interval arithmetic."""
    model = columns[0].class_
    key = model.__mapper__.primary_key[0]
    for found, *values in session.execute(select(key, *columns).where(where)).all():
        moved = {column.key: value - timedelta(seconds=seconds)
                 for column, value in zip(columns, values, strict=True) if value is not None}
        if moved:
            session.execute(update(model).where(key == found).values(moved)
                            .execution_options(synchronize_session=False))


def reset():
    """Empty the tables, the test Redis database and this process's caches (in an app context)."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    else:
        for table in TABLES:
            db.session.execute(text(f"DELETE FROM {table}"))
    db.session.commit()
    redis_store.client.flushdb()
    catalog.forget()
    stock.forget_recent()
    snapshot.forget_shared()
