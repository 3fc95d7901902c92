"""Writing the ledger: every stock movement is an InventoryEvent committed with the change it records.

Transitions are conditional UPDATEs (`WHERE status=<from> AND <clock condition>`), so when accepting a
confirmation, expiring, releasing and the sweeper race for one PENDING hold exactly one statement
matches, and only that one writes its event (invariant 3); the same holds for the payment's outcome
of a CONFIRMING hold.

Locks are taken in one order: the product's row, then its holds' rows. A batch of holds and an
accepted confirmation lock the product first and then write a hold; a transition that wrote the hold
first would then wait for the product (its event's foreign key takes a KEY SHARE lock on it) while
such a transaction waits for the hold: a deadlock, which PostgreSQL ends by failing one of them
(tests/test_lock_order.py stages each). So `lock_products` comes first.
"""

from sqlalchemy import insert, select, update

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


def lock_products(session, *, hold_ids=None, product_ids=None, for_update=False):
    """Lock the rows of these products (or of these holds' products), in id order: KEY SHARE, which
    only a batch or a confirmation's FOR UPDATE waits for, or NO KEY UPDATE to change a counter."""
    query = select(Product.id).order_by(Product.id)
    if hold_ids is not None:
        query = query.where(Product.id.in_(select(Order.product_id).where(Order.id.in_(hold_ids))))
    if product_ids is not None:
        query = query.where(Product.id.in_(product_ids))
    return session.execute(query.with_for_update(key_share=True, read=not for_update)).scalars().all()


def transition_hold(session, hold_id, to_status, *, still_live=None, from_status=PENDING,
                    metadata=None, commit=True, product_locked=False):
    """Move one hold from `from_status` to `to_status` and record its event, or do nothing.

    still_live=True only matches a hold whose expiry is in the future (accepting a confirmation,
    releasing), False only one that has lapsed (expire), None either (a CONFIRMING hold never lapses).
    Returns (product_id, quantity) when this call won, else None. Commits (or rolls back) unless
    commit=False, when the caller's transaction goes on. The product's row is locked first, unless the
    caller has locked it already (product_locked).
    """
    if not product_locked:
        lock_products(session, hold_ids=[hold_id], for_update=to_status == CONFIRMED)
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
        # transaction, under the product's row lock taken above (it queues behind at most the one
        # hold transaction in flight).
        session.execute(
            update(Product).where(Product.id == product_id)
            .values(confirmed_units=Product.confirmed_units + quantity)
            .execution_options(synchronize_session=False)
        )
    if commit:
        session.commit()
    return product_id, quantity
