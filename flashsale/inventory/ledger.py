"""Writing the ledger: every stock movement is an InventoryEvent committed with the change it records.

Transitions are conditional UPDATEs (`WHERE status=<from> AND <clock condition>`), so when accepting a
confirmation, expiring, releasing and the sweeper race for one PENDING hold exactly one statement
matches, and only that one writes its event (invariant 3); the same holds for the payment's outcome
of a CONFIRMING hold.
"""

from sqlalchemy import insert, update

from ..models import CONFIRMED, CONFIRMING, HOLD_CREATED, PENDING, InventoryEvent, Order, Product
from .clock import now_expression

EVENTS = InventoryEvent.__table__
# The clock conditions a transition out of PENDING can require (None: no clock condition).
LIVE, LAPSED = "live", "lapsed"


def event_delta(event_type, quantity):
    """Units this event moves into available stock: holds take, expiries and releases give back."""
    if event_type == HOLD_CREATED:
        return -quantity
    if event_type in (CONFIRMING, CONFIRMED):
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


def transition_hold(session, hold_id, to_status, *, still_live=None, from_status=PENDING,
                    metadata=None, commit=True):
    """Move one hold from `from_status` to `to_status` and record its event, or do nothing.

    still_live=True only matches a hold whose expiry is in the future (accepting a confirmation,
    releasing), False only one that has lapsed (expire), None either (a CONFIRMING hold never lapses).
    Returns (product_id, quantity) when this call won, else None. Commits (or rolls back) unless
    commit=False, when the caller's transaction goes on.
    """
    now = now_expression(session)
    conditions = [Order.id == hold_id, Order.status == from_status]
    if still_live is not None:
        conditions.append(Order.hold_expires_at > now if still_live else Order.hold_expires_at <= now)
    values = {"status": to_status}
    if to_status == CONFIRMING:
        values["confirmation_requested_at"] = now
    if to_status == CONFIRMED:
        values["confirmed_at"] = now
    won = session.execute(
        update(Order).where(*conditions).values(**values)
        .returning(Order.product_id, Order.quantity)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if won is None:
        if commit:
            session.rollback()
        return None
    product_id, quantity = won
    session.execute(
        insert(EVENTS).values(event_row(to_status, hold_id, product_id, quantity, now, metadata))
    )
    if to_status == CONFIRMED:
        # Confirmed units leave the sum of holds in play and enter the counter in the same
        # transaction. This takes the product's row lock, so it queues behind at most the one hold
        # transaction in flight.
        session.execute(
            update(Product).where(Product.id == product_id)
            .values(confirmed_units=Product.confirmed_units + quantity)
            .execution_options(synchronize_session=False)
        )
    if commit:
        session.commit()
    return product_id, quantity
