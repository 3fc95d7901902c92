"""Placing and releasing holds: the verbs routes, jobs, the CLI and tests all call (confirming is in
confirmation.py, paying in payments.py)."""

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import inspect, select
from sqlalchemy.orm import make_transient_to_detached

from ..errors import (
    HoldConfirmed,
    HoldExpired,
    IdempotencyMismatch,
    LimitExceeded,
    NotFound,
    PaymentInProgress,
    SoldOut,
)
from ..models import (
    CONFIRMED,
    CONFIRMING,
    EXPIRED,
    PENDING,
    RELEASED,
    Order,
)
from . import batches, catalog, movements, soldout, stock
from .clock import db_now, shared_clock
from .ledger import transition_hold
from .validation import valid_hold_id, validate_hold_request, validate_idempotency_key

log = logging.getLogger(__name__)
ORDER_MANAGER = inspect(Order).class_manager  # builds an Order without __init__ (_as_loaded)


@dataclass(frozen=True)
class HoldPolicy:
    """The knobs of hold placement, read from configuration by the caller."""

    hold_seconds: int = 120
    lock_ttl_ms: int = 2000
    lock_wait_ms: int = 3000
    max_quantity: int = 10
    # Test hook (fault injection): sleep this long inside the critical section, holding the product's
    # Redis lock and row lock. Honoured only when ENV_NAME is "testing"; the fault tests use it to make
    # the Redis lock lapse under a slow holder and to kill a backend mid-transaction.
    fault_delay_in_lock_ms: int = 0

    @classmethod
    def from_config(cls, config):
        """Build the policy from a Flask config mapping."""
        testing = config.get("ENV_NAME") == "testing"
        return cls(
            config["HOLD_SECONDS"], config["LOCK_TTL_MS"], config["LOCK_WAIT_MS"],
            config["MAX_QUANTITY"],
            config.get("FAULT_DELAY_IN_LOCK_MS", 0) if testing else 0,
        )


@dataclass(frozen=True)
class PlacedHold:
    """The outcome of place_hold: the hold, whether this call created it, and time spent on the lock."""

    hold: Order
    created: bool
    lock_wait_ms: float = 0.0


def request_digest(product_id, email, quantity):
    """A fingerprint of a hold request, stored with its Idempotency-Key to spot a different body."""
    return hashlib.sha256(f"{product_id}|{email}|{quantity}".encode()).hexdigest()


def place_hold(session, redis, product_ref, email, quantity=1, policy=HoldPolicy(),
               idempotency_key=None, on_committed=None, probe_sold_out=True):
    """Hold `quantity` units of a product for `email` for policy.hold_seconds, or raise why not.

    probe_sold_out=False skips the sold-out mark's probe for a caller that has just looked (the
    sold-out gate): the lock attempt refuses a marked product all the same, atomically.

    on_committed(pipe, hold_ids, hold_expires_at), if given, is called once per committed transaction
    that created holds, by whichever buyer ran it: with the line that is one call for a whole batch
    (others' holds included), so per-batch work such as scheduling expiry is done once. It queues its
    Redis commands on `pipe`, which goes with the lock's release and the batch's answers in one round
    trip, and may return a function that is then given the pipeline's replies.
    """
    email, quantity = validate_hold_request(email, quantity, policy.max_quantity)
    idempotency_key = validate_idempotency_key(idempotency_key)
    sale = catalog.sale_info(session, product_ref)
    digest = request_digest(sale.id, email, quantity) if idempotency_key else None
    if idempotency_key and (replay := _replay(session, idempotency_key, digest)):
        return PlacedHold(replay, created=False)
    now, error = shared_clock(session)  # the database clock, as estimated here: every host reads the same
    margin = timedelta(seconds=error)
    session.rollback()  # end the read transaction: nothing is held open while we wait for the lock

    # Cheap refusals first, where the estimate is clearly outside the window; the database clock decides
    # again under the lock (a sale seeded to open "now" is open for a buyer a millisecond later).
    _check_sale_window(sale.sale_starts_at, sale.sale_ends_at, datetime.fromtimestamp(now, timezone.utc), margin)
    if quantity > sale.max_per_customer:
        raise LimitExceeded(limit=sale.max_per_customer)
    if probe_sold_out and soldout.is_marked(redis, sale.id):
        raise SoldOut(fast=True)

    answer, waited_ms = batches.place(session, redis, sale.id, email, quantity, policy, idempotency_key,
                                      digest, on_committed, now)
    if isinstance(answer, batches.Replayed):
        return PlacedHold(get_hold(session, answer.hold_id), False, waited_ms)
    order = _as_loaded(
        id=answer.hold_id, product_id=sale.id, customer_email=email, quantity=quantity, status=PENDING,
        hold_expires_at=answer.hold_expires_at, created_at=answer.created_at,
        confirmation_requested_at=None, confirmed_at=None, idempotency_key=idempotency_key,
        request_digest=digest)
    return PlacedHold(order, True, waited_ms)


def _as_loaded(**columns):
    """An order we just inserted, as if it had been loaded and its session closed (no SELECT): every
    column must be given, as reading a missing one would raise. Detached, not added to the session:
    adding it cost 6 % of a hold's Python time (the add, then the session's close), and a caller that
    wants it in a session adds it there as the row it is (never a second INSERT). Built as SQLAlchemy's
    loader builds a row's instance (no __init__, the columns straight into its dict): 5 us, where the
    constructor's attribute events took 17 us, 6 % of a hold's CPU in the profile."""
    order = ORDER_MANAGER.new_instance()
    order.__dict__.update(columns)
    make_transient_to_detached(order)
    return order


def _check_sale_window(starts, ends, now, margin):
    # Give the estimate the benefit of its doubt: moved by its error bound towards the window.
    judged = now + margin if now < starts else now - margin if now >= ends else now
    if refusal := batches.sale_window_refusal(starts, ends, judged):
        raise refusal


def replay_of(session, product_id, email, quantity, key):
    """The hold an Idempotency-Key already made for this request, or None; another body raises
    IdempotencyMismatch (email and quantity already validated)."""
    return _replay(session, key, request_digest(product_id, email, quantity))


def _replay(session, key, digest):
    """The hold an Idempotency-Key already made, if its request matched; mismatch raises."""
    order = session.execute(
        select(Order).where(Order.idempotency_key == key)
    ).scalar_one_or_none()
    if order is not None and order.request_digest != digest:
        raise IdempotencyMismatch()
    return order


def get_hold(session, hold_id):
    """The hold with this public token, or NotFound."""
    order = session.get(Order, hold_id) if valid_hold_id(hold_id) else None
    if order is None:
        raise NotFound("No such hold.")
    return order


def effective_status(order, now):
    """The hold's status as the clock has decided it: a lapsed PENDING hold is EXPIRED already."""
    if stock.is_lapsed(order.status, order.hold_expires_at, now):
        return EXPIRED
    return order.status


def is_lapsed(session, order):
    """True when a hold is EXPIRED or past its expiry by the database clock (recorded or not)."""
    return effective_status(order, db_now(session)) == EXPIRED


def _refuse_release(order):
    if order.status == CONFIRMED:
        raise HoldConfirmed()
    if order.status == CONFIRMING:
        raise PaymentInProgress()  # the promise is made: only the payment decides now


def release_hold(session, redis, hold_id, reason="customer"):
    """Give a live hold's units back at once (RELEASED); releasing twice is harmless."""
    return release_hold_once(session, redis, hold_id, reason)[0]


def release_hold_once(session, redis, hold_id, reason="customer"):
    """Like release_hold, returning (hold, True) only for the one call that released it."""
    order = get_hold(session, hold_id)
    if order.status == RELEASED:
        return order, False
    _refuse_release(order)
    won = transition_hold(session, hold_id, RELEASED, still_live=True, metadata={"reason": reason})
    if won is None:
        order = session.get(Order, hold_id, populate_existing=True)
        if order.status == RELEASED:
            return order, False
        _refuse_release(order)
        raise HoldExpired(expired_at=order.hold_expires_at.isoformat())
    soldout.stock_returned(redis, [won[0]])
    movements.move(redis, won[0], expires=order.hold_expires_at, held=-won[1])
    return session.get(Order, hold_id, populate_existing=True), True
