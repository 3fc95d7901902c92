"""Taking the payment of an accepted confirmation, and reconciling whatever a crash or a timeout left.

Every attempt first claims the Payment row (a conditional update that also records the attempt), then
calls the gateway outside any lock and transaction with the hold's idempotency key, then settles the
hold in one transaction: captured -> CONFIRMED, refused -> RELEASED (units back at once). A claim is a
lease of `timeout_seconds`: while one attempt holds it no other starts, and once it runs out (the
worker died, the gateway never answered) a reconciler may claim it and ask the gateway what happened
to the key: captured -> CONFIRMED, refused -> RELEASED, never seen -> charge again with the same key
(the gateway returns the first charge if there was one, so nobody pays twice), and past
`final_seconds` after the confirmation was accepted, void the key and release the hold. A capture
for a hold that ended otherwise is refunded. Every step is a conditional update, so any number of
workers may run any of this at once.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select, update

from ..gateways import GatewayUnavailable
from ..models import (
    CAPTURED,
    CONFIRMED,
    CONFIRMING,
    REFUNDED,
    REFUSED,
    RELEASED,
    STARTED,
    VOIDED,
    Order,
    Payment,
)
from . import movements, outbox, soldout
from .clock import db_now, is_postgresql, now_expression
from .ledger import transition_hold
from .waiting_room import close_line_when_sold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaymentPolicy:
    """One attempt's lease, when an unfinished payment is dropped, and a shopper's time to authorise a card."""

    timeout_seconds: float = 30
    final_seconds: float = 900
    action_seconds: float = 300  # Stripe only: 3-D Secure and new cards (intents.py)

    @classmethod
    def from_config(cls, config):
        """Build the policy from a Flask config mapping."""
        return cls(config["PAYMENT_TIMEOUT_SECONDS"], config["PAYMENT_FINAL_SECONDS"],
                   config["PAYMENT_ACTION_SECONDS"])


@dataclass(frozen=True)
class Settled:
    """What one attempt or reconciliation did: the hold's status after it, and how it got there."""

    status: str
    outcome: str  # confirmed, refused, voided, refunded, pending (no answer yet), skipped (not ours)
    latency_seconds: float | None = None  # accepted -> confirmed, for a confirmation this call settled


@dataclass(frozen=True)
class _Claim:
    hold_id: str
    key: str
    amount_cents: int
    email: str
    attempts: int
    past_final: bool


def take_payment(session, redis, hold_id, gateway, policy=PaymentPolicy()):
    """The payment job: claim the hold's payment, charge it once, settle the hold. Safe to repeat."""
    claim = _claim(session, hold_id, policy, due_only=False)
    if claim is None:
        return Settled(hold_status(session, hold_id), "skipped")
    try:
        charge = gateway.charge(claim.key, claim.amount_cents, claim.email, hold_id)
    except GatewayUnavailable as unknown:
        # The outcome is unknown: the lease runs out and a reconciler asks the gateway about the key.
        log.warning("payment for hold %s got no answer (%s); reconciliation will settle it",
                    hold_id, unknown)
        return Settled(CONFIRMING, "pending")
    return settle(session, redis, hold_id, charge, gateway)


def reconcile_payment(session, redis, hold_id, gateway, policy=PaymentPolicy()):
    """Settle one payment whose attempt's lease ran out, by asking the gateway about its key."""
    claim = _claim(session, hold_id, policy, due_only=True)
    if claim is None:
        return Settled(hold_status(session, hold_id), "skipped")
    try:
        charge = gateway.find(claim.key)
        if charge is None and claim.past_final:
            charge = gateway.void(claim.key)  # from now on nobody can take money with this key
            if charge is None:
                return _give_up(session, redis, hold_id)
        elif charge is None:
            charge = gateway.charge(claim.key, claim.amount_cents, claim.email, hold_id)
    except GatewayUnavailable as unknown:
        log.warning("reconciling hold %s: gateway unavailable (%s); trying again later", hold_id, unknown)
        return Settled(CONFIRMING, "pending")
    return settle(session, redis, hold_id, charge, gateway)


def settle(session, redis, hold_id, charge, gateway):
    """Record the gateway's answer: captured -> CONFIRMED, refused -> RELEASED, in one transaction each.

    A capture whose hold has already ended otherwise is refunded (recorded as captured first, so a
    crash before the refund leaves a record that refunds_owed finds).
    """
    now = now_expression(session)
    if charge.approved:
        won = transition_hold(session, hold_id, CONFIRMED, from_status=CONFIRMING, commit=False,
                              metadata={"charge": charge.id, "amount_cents": charge.amount_cents})
        _record_payment(session, hold_id, (STARTED, VOIDED), CAPTURED, charge.id, now)
        if won:
            outbox.order_confirmed(session, hold_id)  # the shop hears of it exactly when it commits
        latency = _confirmation_latency(session, hold_id) if won else None
        session.commit()
        if won:
            movements.move(redis, won[0], paying=-won[1], confirmed=won[1])
            close_line_when_sold(session, redis, won[0])
            return Settled(CONFIRMED, "confirmed", latency)
        status = hold_status(session, hold_id)
        if status == CONFIRMED:
            return Settled(CONFIRMED, "skipped")  # another attempt settled it first
        refund(session, hold_id, charge, gateway)
        return Settled(status, "refunded")
    won = transition_hold(session, hold_id, RELEASED, from_status=CONFIRMING, commit=False,
                          metadata={"reason": "payment_refused", "charge": charge.id})
    _record_payment(session, hold_id, (STARTED,), REFUSED if charge.status != VOIDED else VOIDED,
                    charge.id, now)
    session.commit()
    if won:
        soldout.stock_returned(redis, [won[0]])
        movements.move(redis, won[0], paying=-won[1])
        return Settled(RELEASED, "refused")
    return Settled(hold_status(session, hold_id), "skipped")


def refund(session, hold_id, charge, gateway):
    """Give a capture back at the gateway, then record the payment REFUNDED (idempotent)."""
    gateway.refund(charge)
    won = session.execute(update(Payment).where(Payment.order_id == hold_id, Payment.state != REFUNDED)
                          .values(state=REFUNDED, charge_ref=charge.id, settled_at=now_expression(session))
                          .execution_options(synchronize_session=False)).rowcount
    if won:
        outbox.order_refunded(session, hold_id)  # one event, by the call that recorded the refund
    session.commit()


def due_payments(session, policy=PaymentPolicy(), limit=200):
    """Holds whose payment is unsettled and whose last attempt's lease has run out, oldest first."""
    expired_lease = func.coalesce(Payment.attempted_at, Payment.created_at) <= lease_start(session, policy)
    rows = session.execute(
        select(Payment.order_id).where(Payment.state == STARTED, expired_lease)
        .order_by(func.coalesce(Payment.attempted_at, Payment.created_at)).limit(limit)
    ).scalars().all()
    session.rollback()
    return rows


def refunds_owed(session, limit=200):
    """(hold id, idempotency key) of captures whose hold did not end CONFIRMED (a crash mid-refund)."""
    rows = session.execute(
        select(Payment.order_id, Payment.idempotency_key)
        .join(Order, Order.id == Payment.order_id)
        .where(Payment.state == CAPTURED, Order.status.not_in([CONFIRMED, CONFIRMING])).limit(limit)
    ).all()
    session.rollback()
    return rows


def _claim(session, hold_id, policy, due_only):
    """Start an attempt: bump attempts and stamp attempted_at on an unsettled payment, if no other
    attempt holds the lease (due_only: and only once the lease has run out). None when not ours."""
    lease_free = or_(Payment.attempted_at.is_(None), Payment.attempted_at <= lease_start(session, policy))
    if due_only:
        lease_free = func.coalesce(Payment.attempted_at, Payment.created_at) <= lease_start(session, policy)
    row = session.execute(
        update(Payment)
        .where(Payment.order_id == hold_id, Payment.state == STARTED, lease_free)
        .values(attempts=Payment.attempts + 1, attempted_at=now_expression(session))
        .returning(Payment.idempotency_key, Payment.amount_cents, Payment.attempts)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        session.rollback()
        return None
    key, amount, attempts = row
    email, requested_at = session.execute(
        select(Order.customer_email, Order.confirmation_requested_at).where(Order.id == hold_id)).one()
    past_final = db_now(session) >= requested_at + timedelta(seconds=policy.final_seconds)
    session.commit()  # the attempt is on record before the gateway is called
    return _Claim(hold_id, key, amount, email, attempts, past_final)


def _give_up(session, redis, hold_id):
    """Past the final deadline with nothing taken (the key is voided): release the hold."""
    now = now_expression(session)
    won = transition_hold(session, hold_id, RELEASED, from_status=CONFIRMING, commit=False,
                          metadata={"reason": "payment_unfinished"})
    _record_payment(session, hold_id, (STARTED,), VOIDED, None, now)
    session.commit()
    if won:
        soldout.stock_returned(redis, [won[0]])
        movements.move(redis, won[0], paying=-won[1])
        return Settled(RELEASED, "voided")
    return Settled(hold_status(session, hold_id), "skipped")


def _record_payment(session, hold_id, from_states, state, charge_ref, now):
    session.execute(
        update(Payment).where(Payment.order_id == hold_id, Payment.state.in_(from_states))
        .values(state=state, charge_ref=charge_ref, settled_at=now)
        .execution_options(synchronize_session=False))


def _confirmation_latency(session, hold_id):
    confirmed_at, requested_at = session.execute(
        select(Order.confirmed_at, Order.confirmation_requested_at).where(Order.id == hold_id)).one()
    if confirmed_at is None or requested_at is None:
        return None
    return (confirmed_at - requested_at).total_seconds()


def lease_start(session, policy):
    """Attempts stamped at or before this instant have run out of time (database clock)."""
    if is_postgresql(session):
        return func.statement_timestamp() - timedelta(seconds=policy.timeout_seconds)
    return db_now(session) - timedelta(seconds=policy.timeout_seconds)


def hold_status(session, hold_id):
    status = session.execute(select(Order.status).where(Order.id == hold_id)).scalar_one_or_none()
    session.rollback()
    return status
