"""Placing, confirming and releasing a hold for a request, the same way for the JSON API and the shop.

One sequence, written once (design section 4, step 5): the domain's `place_hold`, which calls back
to schedule expiry once per committed batch, then the metrics. Views only parse their input before
and shape their answer after.
"""

import time
from dataclasses import dataclass

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError

from . import metrics
from .errors import FlashsaleError, NoWaitingRoom, Unavailable
from .extensions import db, redis_store
from .gateways import gateway_from_config
from .gateways.stripe_settings import is_stripe
from .inventory import catalog, confirmation, holds, intents
from .inventory.stock import recently_available
from .inventory.validation import normalise_email, validate_hold_request, validate_idempotency_key
from .inventory.waiting_room import ticket_product, waiting_room_from_config
from .models import CONFIRMING
from .worker.jobs import ExpirySlot, enqueue_payment


def place_hold(product_ref, email, quantity, idempotency_key=None, admission=None, sold_out_checked=False):
    """Place a hold, schedule its expiry and record the outcome; refusals are recorded, then raised.

    sold_out_checked: the sold-out gate looked at the product's mark a moment ago (no second probe).

    On a waiting-room product the hold needs the shopper's admission, which it uses up (given back if
    the request changed nothing and may be retried: a 503).
    """
    started = time.perf_counter()
    policy = holds.HoldPolicy.from_config(current_app.config)
    redis = redis_store.client
    try:
        admitted = _use_admission(product_ref, email, quantity, idempotency_key, admission)
        if admitted and admitted.replay is not None:
            return admitted.replay
        try:
            placed = holds.place_hold(db.session, redis, product_ref, email, quantity, policy,
                                      idempotency_key, on_committed=schedule_expiry,
                                      probe_sold_out=not sold_out_checked)
        except (Unavailable, RedisError, OperationalError):
            if admitted:
                _give_back(admitted)
            raise
    except FlashsaleError as refusal:
        metrics.record_outcome(redis, outcome_name(refusal),
                               latency_ms=(time.perf_counter() - started) * 1000)
        raise
    if placed.created:
        metrics.record_outcome(redis, "created",
                               latency_ms=(time.perf_counter() - started) * 1000,
                               lock_wait_ms=placed.lock_wait_ms)
    return placed


@dataclass(frozen=True)
class _Admitted:
    sale: object
    admission: str
    replay: object = None


def _use_admission(product_ref, email, quantity, idempotency_key, admission):
    """For a waiting-room product: a replay of a hold already made, or the admission used up; else None."""
    session = db.session
    sale = catalog.sale_info(session, product_ref)
    if not sale.waiting_room:
        return None
    email, quantity = validate_hold_request(email, quantity, current_app.config["MAX_QUANTITY"])
    if idempotency_key:
        # A retry of a hold this admission already made: the same hold, though the admission is used.
        replay = holds.replay_of(session, sale.id, email, quantity, validate_idempotency_key(idempotency_key))
        if replay is not None:
            return _Admitted(sale, admission, holds.PlacedHold(replay, created=False))
    waiting_room_from_config(redis_store.client, current_app.config).use_admission(sale, email, admission)
    return _Admitted(sale, admission)


def _give_back(admitted):
    try:
        waiting_room_from_config(redis_store.client, current_app.config).give_back(admitted.sale, admitted.admission)
    except RedisError:
        current_app.logger.warning("could not give an admission back after a failed hold")


def join_line(product_ref, email):
    """Join a waiting-room product's line (once per email); NoWaitingRoom for any other product."""
    sale = catalog.sale_info(db.session, product_ref)
    if not sale.waiting_room:
        raise NoWaitingRoom()
    email = normalise_email(email)
    available = recently_available(db.session, sale.id)
    db.session.rollback()
    return waiting_room_from_config(redis_store.client, current_app.config).join(sale, email, available)


def view_ticket(ticket_id):
    """A ticket as of now (the front of its line admitted first)."""
    sale = catalog.sale_info(db.session, str(ticket_product(ticket_id)))
    available = recently_available(db.session, sale.id)
    db.session.rollback()
    return waiting_room_from_config(redis_store.client, current_app.config).view(sale, ticket_id, available)


def confirm_hold(hold_id, payment_method=None):
    """Accept the shopper's confirmation (the promise is made when this returns) and queue the payment.

    Returns the Acceptance; refusals (HoldExpired, HoldReleased, NotFound) are raised. If Redis refuses
    the job, the promise stands all the same: reconciliation takes the payment once its lease is due.

    With Stripe the card is authorised here, with the shopper (design section 11): the hold's intent is
    made (its client secret is in the answer), `payment_method` is tried on it, and a confirm of a hold
    already CONFIRMING re-reads it (after 3-D Secure); the worker captures what is authorised.
    """
    config = current_app.config
    by_card = is_stripe(config)
    accepted = confirmation.accept_confirmation(db.session, hold_id, redis_store.client,
                                                config["PAYMENT_ACTION_SECONDS"] if by_card else None)
    if accepted.accepted_now:
        if not by_card:
            _enqueue_payment(hold_id)
        metrics.record_outcome(redis_store.client, "accepted")
    if by_card and accepted.hold.status == CONFIRMING:
        _authorise_card(hold_id, payment_method, accepted.accepted_now)
    return accepted


def _authorise_card(hold_id, payment_method, accepted_now):
    """Move the hold's intent on as far as the shopper's part goes; the worker captures. A card that
    could not reach Stripe is refused with 503 (the hold is unchanged: send it again)."""
    config, redis = current_app.config, redis_store.client
    progress = intents.advance(db.session, redis, hold_id, gateway_from_config(config, redis),
                               intents.PaymentPolicy.from_config(config), payment_method, capture=False)
    metrics.record_payment(redis, progress)
    if progress.outcome in ("authorised", "pending"):
        _enqueue_payment(hold_id)  # the worker captures, or tries again while Stripe does not answer
    if progress.outcome == "pending" and payment_method and not accepted_now:
        raise Unavailable("The payment provider did not answer; send the card again.")


def _enqueue_payment(hold_id):
    try:
        enqueue_payment(redis_store.queue, hold_id)
    except Exception:  # noqa: BLE001 - committed already; reconciliation picks the payment up
        current_app.logger.warning("could not queue the payment of an accepted confirmation")


def hold_with_payment(hold_id, order=None):
    """(hold, its Payment or None) as of now: what the hold's JSON shows (`order`: just read)."""
    from sqlalchemy import select

    from .models import Payment

    if order is None:
        order = holds.get_hold(db.session, hold_id)
        db.session.refresh(order)  # the payment flow may have moved it since this session read it
    payment = None
    if order.confirmation_requested_at is not None:
        payment = db.session.execute(select(Payment).where(Payment.order_id == hold_id)
                                     .execution_options(populate_existing=True)).scalar_one_or_none()
    return order, payment


def release_hold(hold_id):
    """Release a hold and count it once, however often the shopper clicks."""
    order, released_now = holds.release_hold_once(db.session, redis_store.client, hold_id)
    if released_now:
        metrics.record_outcome(redis_store.client, "released")
    return order, released_now


def schedule_expiry(pipe, hold_ids, hold_expires_at):
    """Queue expiry for holds one transaction created (a whole batch at once) on the line's pipeline;
    returns what to do with its replies. If Redis refuses, the sweeper and read-time expiry cover them."""
    slot = ExpirySlot(hold_ids, hold_expires_at)
    slot.queue(pipe)
    queue = redis_store.queue

    def enqueue_if_first(replies):
        try:
            slot.enqueue_if_first(queue, replies)
        except Exception:  # noqa: BLE001 - the holds are committed; expiry is already decided by the clock
            current_app.logger.warning("could not schedule expiry of %d holds", len(hold_ids))

    return enqueue_if_first


def outcome_name(refusal):
    """The metrics outcome a refusal counts as."""
    return {"sold_out": "sold_out", "unavailable": "busy", "rate_limited": "rate_limited"}.get(
        refusal.code, "rejected")
