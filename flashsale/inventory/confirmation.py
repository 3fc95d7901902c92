"""Accepting a confirmation: the promise that the hold ends CONFIRMED unless the payment is refused.

It happens in the shopper's request, as one conditional update while the hold is live by the database
clock (PENDING -> CONFIRMING, stamped confirmation_requested_at), with its CONFIRMING event and the
Payment that the payment job will take, all in one transaction. From then on the hold counts against
stock, never expires and cannot be released by the shopper; the queue and the gateway may take as long
as they take.
"""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import insert, select

from ..errors import HoldExpired, HoldReleased
from ..models import CONFIRMED, CONFIRMING, EXPIRED, RELEASED, STARTED, Order, Payment, Product
from . import movements
from .clock import now_expression
from .holds import get_hold, is_lapsed
from .ledger import transition_hold

PAYMENTS = Payment.__table__
KEY_PREFIX = "flashsale-hold-"  # migration 0003 backfills with the same prefix


def payment_key(hold_id):
    """The gateway idempotency key for a hold's payment: derived from the hold, so never charged twice."""
    return KEY_PREFIX + hold_id


@dataclass(frozen=True)
class Acceptance:
    """The hold after a confirm, and whether this call made the promise (False: it was made already)."""

    hold: Order
    accepted_now: bool


def accept_confirmation(session, hold_id, redis=None, action_seconds=None):
    """Accept the shopper's confirmation of a live hold, or say it was already accepted.

    With `redis`, the hold's units move from held to paying in the product's stock snapshot. With
    `action_seconds` (a gateway the shopper authorises on: Stripe), the payment records the deadline
    for that, counted from the acceptance by the database clock.

    Raises HoldExpired once the hold has lapsed by the database clock (recorded or not), HoldReleased
    for a released hold. A second click, or two at once, accept once.
    """
    order = get_hold(session, hold_id)
    if order.status in (CONFIRMING, CONFIRMED):
        return Acceptance(order, False)
    _refuse_if_over(session, order)
    # The product's row lock, as the line's batches take it, before the hold is judged live: otherwise
    # a confirmation judged live just before the expiry instant could commit just after it, while a batch
    # that read the clock in between gave the lapsing units to a newcomer (both would count: oversell).
    # Under the lock the clock of the conditional update below is read after any such batch committed,
    # and a batch that comes after sees this hold CONFIRMING. (SQLite: BEGIN IMMEDIATE already did this.)
    # FOR NO KEY UPDATE: it excludes the batches (FOR UPDATE) and other acceptances all the same, but
    # not the foreign-key checks (FOR KEY SHARE) of a capture's or a sweep's ledger insert, which hold
    # their hold's row meanwhile: FOR UPDATE deadlocked with them (tests/test_confirm_settle_locks.py).
    price, currency = session.execute(select(Product.price_cents, Product.currency)
                                      .where(Product.id == order.product_id).with_for_update(key_share=True)).one()
    amount = order.quantity * price
    won = transition_hold(session, hold_id, CONFIRMING, still_live=True, commit=False,
                          metadata={"amount_cents": amount}, product_locked=True)
    if won is None:
        # Lost to expiry, a release or a concurrent click: the row says which.
        session.rollback()
        order = session.get(Order, hold_id, populate_existing=True)
        if order.status in (CONFIRMING, CONFIRMED):
            return Acceptance(order, False)
        _refuse_if_over(session, order)
        raise HoldExpired(expired_at=order.hold_expires_at.isoformat())
    deadline = None
    if action_seconds:
        accepted_at = session.execute(select(Order.confirmation_requested_at).where(Order.id == hold_id)).scalar_one()
        deadline = accepted_at + timedelta(seconds=action_seconds)
    session.execute(insert(PAYMENTS).values(
        order_id=hold_id, amount_cents=amount, currency=currency, idempotency_key=payment_key(hold_id),
        state=STARTED, attempts=0, created_at=now_expression(session), action_deadline=deadline))
    session.commit()
    accepted = session.get(Order, hold_id, populate_existing=True)
    if redis is not None:
        movements.move(redis, won[0], expires=accepted.hold_expires_at, held=-won[1], paying=won[1])
    return Acceptance(accepted, True)


def _refuse_if_over(session, order):
    if order.status == RELEASED:
        raise HoldReleased()
    if order.status == EXPIRED or is_lapsed(session, order):
        raise HoldExpired(expired_at=order.hold_expires_at.isoformat())
