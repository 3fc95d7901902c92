"""Writing the ledger: every stock movement is an InventoryEvent committed with the change it records.

Transitions out of PENDING are conditional UPDATEs (`WHERE status='PENDING' AND <clock condition>`), so
when confirm, expire, release and the sweeper race for one hold exactly one statement matches, and only
that one writes its event (invariant 3).
"""

from sqlalchemy import insert, update

from ..models import CONFIRMED, HOLD_CREATED, PENDING, InventoryEvent, Order, Product
from .clock import now_expression

EVENTS = InventoryEvent.__table__


def event_delta(event_type, quantity):
    """Units this event moves into available stock: holds take, expiries and releases give back."""
    if event_type == HOLD_CREATED:
        return -quantity
    if event_type == CONFIRMED:
        return 0
    return quantity


def event_row(event_type, order_id, product_id, quantity, created_at, metadata=None):
    """The values of one InventoryEvent row."""
    return {
        "product_id": product_id,
        "order_id": order_id,
        "type": event_type,
        "delta": event_delta(event_type, quantity),
        "metadata": metadata or {},
        "created_at": created_at,
    }


def transition_hold(session, hold_id, to_status, *, still_live, metadata=None):
    """Move one PENDING hold to `to_status` and record its event, or do nothing; commits either way.

    still_live=True only matches a hold whose expiry is in the future (confirm, release); False only one
    that has lapsed (expire). Returns (product_id, quantity) when this call won, else None.
    """
    now = now_expression(session)
    clock = Order.hold_expires_at > now if still_live else Order.hold_expires_at <= now
    values = {"status": to_status}
    if to_status == CONFIRMED:
        values["confirmed_at"] = now
    won = session.execute(
        update(Order)
        .where(Order.id == hold_id, Order.status == PENDING, clock)
        .values(**values)
        .returning(Order.product_id, Order.quantity)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if won is None:
        session.rollback()
        return None
    product_id, quantity = won
    session.execute(
        insert(EVENTS).values(event_row(to_status, hold_id, product_id, quantity, now, metadata))
    )
    if to_status == CONFIRMED:
        # Confirmed units leave the PENDING sum and enter the counter in the same transaction. This
        # takes the product's row lock, so it queues behind at most the one hold transaction in flight.
        session.execute(
            update(Product).where(Product.id == product_id)
            .values(confirmed_units=Product.confirmed_units + quantity)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return product_id, quantity
