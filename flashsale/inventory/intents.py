"""Card payments by PaymentIntent (Stripe): authorised with the shopper, captured by the worker.

An accepted confirmation has one Payment (confirmation.py). With a gateway that pays by intent, every
step below re-reads the intent from the gateway (the source of truth), acts on its status, and records
what it saw with a conditional update on the payment, so the shopper's request, the worker, a webhook
and the reconciler may all run it at once, in any order, any number of times:

    no intent yet            create one (manual capture, metadata hold_id) and record its id before
                             anything can authorise it; its client secret goes to the shopper
    requires_payment_method  the shopper's turn: a card from the API body or the hold page goes on it
    or requires_action       and the server confirms it; 3-D Secure is finished by Stripe.js. A tried
                             intent (declined, 3-D Secure failed) is canceled, then replaced by a fresh
                             one for the next card: one live intent per hold, never two that can pay
    requires_confirmation    confirm it (a confirm whose answer was lost)
    requires_capture         capture it (the worker's part) -> succeeded -> CONFIRMED
    past the action deadline cancel it -> canceled -> RELEASED, units back; an intent authorised by
                             then is captured instead (the confirmation once accepted is kept)

Nothing here rests on the gateway honouring idempotency keys (they are sent all the same): a lost
answer is settled by reading the intent by its recorded id, and a duplicate created by a retry is never
recorded, so it never gets a card.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select, true, update

from ..gateways import CAPTURED as CHARGE_CAPTURED
from ..gateways import Charge, GatewayUnavailable
from ..models import CONFIRMED, CONFIRMING, RELEASED, STARTED, VOIDED, Order, Payment
from . import movements, soldout
from .clock import db_now, now_expression
from .ledger import transition_hold
from .payments import PaymentPolicy, Settled, hold_status, lease_start, refund, settle

log = logging.getLogger(__name__)
SHOPPERS_TURN = ("requires_payment_method", "requires_action")
MAX_STEPS = 8  # create, replace, confirm, capture...: more than any one call needs


@dataclass(frozen=True)
class _Row:
    hold_id: str
    hold_status: str
    state: str
    key: str
    amount_cents: int
    currency: str
    intent_id: str | None
    replaced: tuple
    past_deadline: bool


def take_payment(session, redis, hold_id, gateway, policy=PaymentPolicy()):
    """The payment job: move the hold's intent on as far as it goes, capture included. Safe to repeat."""
    if not _claim(session, hold_id, policy, due_only=False):
        return Settled(hold_status(session, hold_id), "skipped")
    return advance(session, redis, hold_id, gateway, policy)


def reconcile_payment(session, redis, hold_id, gateway, policy=PaymentPolicy()):
    """Settle one payment whose lease ran out or whose deadline passed, by reading its intent."""
    if not _claim(session, hold_id, policy, due_only=True):
        return Settled(hold_status(session, hold_id), "skipped")
    return advance(session, redis, hold_id, gateway, policy)


def advance(session, redis, hold_id, gateway, policy=PaymentPolicy(), payment_method=None, capture=True):
    """Read the hold's intent and take every step its status allows (see the module's docstring).

    payment_method: a card the shopper just gave, tried on the live intent (a fresh one if it was
    tried already). capture=False stops at an authorisation (outcome "authorised"), for callers that
    leave the capture to the worker. Outcomes: confirmed, refunded, voided (released at the deadline),
    authorised, waiting (the shopper's turn), pending (no answer from the gateway), skipped.
    """
    row = _load(session, hold_id, policy)
    if row is None or row.state != STARTED:
        return Settled(row.hold_status if row else hold_status(session, hold_id), "skipped")
    try:
        intent = gateway.retrieve(row.intent_id) if row.intent_id else None
        for _ in range(MAX_STEPS):
            if row.state != STARTED:
                return Settled(row.hold_status, "skipped")  # another caller settled it meanwhile
            if intent is None:
                if row.past_deadline:
                    return _release(session, redis, row, None)
                intent, row = _create(session, gateway, row, policy)
                continue
            status = intent.status
            if status == "succeeded":
                return _captured(session, redis, row, intent, gateway)
            if status == "requires_capture":
                if not capture:
                    _record(session, row, intent)
                    return Settled(CONFIRMING, "authorised")
                intent = gateway.capture(intent.id, f"{row.key}-capture-{intent.id}")
                continue
            if status == "canceled" and row.past_deadline:
                return _release(session, redis, row, intent)
            if status == "processing" or (status == "canceled" and not payment_method):
                # Processing: the gateway decides. Canceled before the deadline: a shopper's new card
                # is replacing it right now (its successor gets recorded), or it was canceled by hand.
                return Settled(CONFIRMING, "waiting")
            if row.past_deadline:
                intent = gateway.cancel(intent.id, f"{row.key}-cancel-{intent.id}")
                continue
            if status == "requires_confirmation":
                intent = gateway.confirm(intent.id, f"{row.key}-confirm-{intent.id}")
                continue
            if not payment_method:
                _record(session, row, intent)
                return Settled(CONFIRMING, "waiting")
            card, payment_method = payment_method, None
            if not intent.fresh:
                intent, row = _replace(session, gateway, row, intent, policy)
                if intent.status != "requires_payment_method":
                    continue  # the old intent was authorised after all, or the new one is not ours
            intent = gateway.attach_and_confirm(intent.id, card, f"{row.key}-confirm-{intent.id}-{card}")
        _record(session, row, intent)
        return Settled(CONFIRMING, "pending")
    except GatewayUnavailable as unknown:
        log.warning("payment of hold %s: no answer from the gateway (%s); it is read again later", hold_id, unknown)
        session.rollback()
        return Settled(CONFIRMING, "pending")


def due_payments(session, policy=PaymentPolicy(), limit=200):
    """Unsettled payments whose attempt's lease ran out, or whose action deadline passed, oldest first."""
    started_at = func.coalesce(Payment.attempted_at, Payment.created_at)
    rows = session.execute(
        select(Payment.order_id).where(Payment.state == STARTED, _due(session, policy))
        .order_by(started_at).limit(limit)).scalars().all()
    session.rollback()
    return rows


def refunds_owed(session, limit=200):
    """Holds whose intent was captured though the hold did not end CONFIRMED (a crash mid-refund)."""
    from ..models import CAPTURED

    rows = session.execute(
        select(Payment.order_id).join(Order, Order.id == Payment.order_id)
        .where(Payment.state == CAPTURED, Payment.intent_id.is_not(None),
               Order.status.not_in([CONFIRMED, CONFIRMING])).limit(limit)).scalars().all()
    session.rollback()
    return rows


def refund_owed(session, hold_id, gateway):
    """Give back the captured intent of a hold that did not end CONFIRMED, and record it refunded."""
    intent_id, key = session.execute(select(Payment.intent_id, Payment.idempotency_key)
                                     .where(Payment.order_id == hold_id)).one()
    session.rollback()
    refund(session, hold_id, _charge(hold_id, key, intent_id, 0), _ByIntent(gateway))


def _create(session, gateway, row, policy):
    """Create the hold's next intent and record it, unless another caller recorded one first (then that
    one is the hold's, and ours, which nobody has a secret or card for, is canceled)."""
    number = len(row.replaced) + 1
    intent = gateway.create_intent(row.hold_id, row.amount_cents, row.currency, f"{row.key}-intent-{number}")
    won = session.execute(
        update(Payment).where(Payment.order_id == row.hold_id, Payment.state == STARTED,
                              Payment.intent_id.is_(None))
        .values(intent_id=intent.id, intent_status=intent.status, client_secret=intent.client_secret,
                last_error=None)
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    return _winner(session, gateway, row, intent, won, policy)


def _replace(session, gateway, row, tried, policy):
    """Cancel a tried intent (so no card can ever be charged on it) and record a fresh one in its
    place. Answers the old intent if it could not be canceled (authorised meanwhile: capture it)."""
    canceled = gateway.cancel(tried.id, f"{row.key}-cancel-{tried.id}")
    if canceled.status != "canceled":
        return canceled, row
    number = len(row.replaced) + 2
    intent = gateway.create_intent(row.hold_id, row.amount_cents, row.currency, f"{row.key}-intent-{number}")
    won = session.execute(
        update(Payment).where(Payment.order_id == row.hold_id, Payment.state == STARTED,
                              Payment.intent_id == tried.id)
        .values(intent_id=intent.id, intent_status=intent.status, client_secret=intent.client_secret,
                last_error=tried.error, replaced_intents=[*row.replaced, tried.id])
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    return _winner(session, gateway, row, intent, won, policy)


def _winner(session, gateway, row, intent, won, policy):
    fresh = _load(session, row.hold_id, policy)
    if won or fresh.intent_id == intent.id:  # ours, or the same intent answered to a replayed key
        return intent, fresh
    log.info("hold %s: intent %s lost to %s; canceling it", row.hold_id, intent.id, fresh.intent_id)
    try:
        gateway.cancel(intent.id, f"{row.key}-cancel-{intent.id}")
    except GatewayUnavailable:
        pass  # it has no card and nobody has its secret: it can never take money
    if fresh.state != STARTED or fresh.intent_id is None:
        return None, fresh
    return gateway.retrieve(fresh.intent_id), fresh


def _captured(session, redis, row, intent, gateway):
    """The intent is captured: CONFIRMED (or refunded, if the hold ended otherwise meanwhile)."""
    session.execute(update(Payment).where(Payment.order_id == row.hold_id, Payment.intent_id == intent.id)
                    .values(intent_status=intent.status, client_secret=None)
                    .execution_options(synchronize_session=False))
    return settle(session, redis, row.hold_id, _charge(row.hold_id, row.key, intent.id, intent.amount),
                  _ByIntent(gateway))


def _release(session, redis, row, intent):
    """Past the deadline with nothing authorised (the intent canceled, or none ever made): RELEASED."""
    won = transition_hold(session, row.hold_id, RELEASED, from_status=CONFIRMING, commit=False,
                          metadata={"reason": "payment_not_completed",
                                    "intent": intent.id if intent else None})
    session.execute(
        update(Payment).where(Payment.order_id == row.hold_id, Payment.state == STARTED,
                              Payment.intent_id.is_(None) if intent is None else Payment.intent_id == intent.id)
        .values(state=VOIDED, intent_status=intent.status if intent else None, client_secret=None,
                settled_at=now_expression(session))
        .execution_options(synchronize_session=False))
    session.commit()
    if won:
        soldout.stock_returned(redis, [won[0]])
        movements.move(redis, won[0], paying=-won[1])
        return Settled(RELEASED, "voided")
    return Settled(hold_status(session, row.hold_id), "skipped")


def _record(session, row, intent):
    """Record what the intent says (the shopper reads it from the hold's JSON)."""
    turn = intent.status in SHOPPERS_TURN
    session.execute(
        update(Payment).where(Payment.order_id == row.hold_id, Payment.state == STARTED,
                              Payment.intent_id == intent.id)
        .values(intent_status=intent.status, client_secret=intent.client_secret if turn else None,
                last_error=intent.error if turn else None)
        .execution_options(synchronize_session=False))
    session.commit()


def _load(session, hold_id, policy):
    found = session.execute(
        select(Order.status, Order.confirmation_requested_at, Payment.state, Payment.idempotency_key,
               Payment.amount_cents, Payment.currency, Payment.intent_id, Payment.replaced_intents,
               Payment.action_deadline)
        .join(Payment, Payment.order_id == Order.id).where(Order.id == hold_id)).one_or_none()
    if found is None:
        session.rollback()
        return None
    deadline = found.action_deadline or found.confirmation_requested_at + timedelta(seconds=policy.action_seconds)
    past = db_now(session) >= deadline
    session.rollback()
    return _Row(hold_id, found.status, found.state, found.idempotency_key, found.amount_cents, found.currency,
                found.intent_id, tuple(found.replaced_intents or ()), past)


def _claim(session, hold_id, policy, due_only):
    """Start an attempt (attempts + 1, attempted_at now) on an unsettled payment; due_only (the
    reconciler): only once the lease ran out or the deadline passed. False when not ours.

    The payment job always goes (it is queued when a card was just authorised, or Stripe did not
    answer): unlike a charge, two attempts on one intent at once are safe (Stripe refuses the second
    capture, and every record is conditional), so a reconciler's recent read never delays a capture.
    """
    lease_free = _due(session, policy) if due_only else true()
    won = session.execute(
        update(Payment).where(Payment.order_id == hold_id, Payment.state == STARTED, lease_free)
        .values(attempts=Payment.attempts + 1, attempted_at=now_expression(session))
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    return bool(won)


def _due(session, policy):
    """The lease ran out, or the action deadline passed since the last attempt (one prompt attempt then,
    and lease by lease after it)."""
    started_at = func.coalesce(Payment.attempted_at, Payment.created_at)
    now = now_expression(session)
    return or_(started_at <= lease_start(session, policy),
               (Payment.action_deadline <= now) & (started_at < Payment.action_deadline))


def _charge(hold_id, key, intent_id, amount):
    """A captured intent in the shape payments.settle() records."""
    return Charge(intent_id, key, CHARGE_CAPTURED, amount, hold_id)


class _ByIntent:
    """What payments.settle() and refund() call on a gateway, done on the intent."""

    def __init__(self, gateway):
        self.gateway = gateway

    def refund(self, charge):
        return self.gateway.refund(charge.id, f"{charge.key}-refund-{charge.id}")
