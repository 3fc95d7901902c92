"""Placing and releasing holds: the verbs routes, jobs, the CLI and tests all call (confirming is in
confirmation.py, paying in payments.py)."""

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import make_transient_to_detached

from .. import keys
from ..errors import (
    HoldConfirmed,
    HoldExpired,
    IdempotencyMismatch,
    LimitExceeded,
    LockBusy,
    NotFound,
    PaymentInProgress,
    SoldOut,
    Unavailable,
)
from ..models import (
    CONFIRMED,
    CONFIRMING,
    EXPIRED,
    PENDING,
    RELEASED,
    Order,
    Product,
    new_hold_id,
)
from . import catalog, line, snapshot, soldout
from .clock import db_now, wait_until_past
from .ledger import transition_hold
from .locks import LockRefused, ProductLock
from .validation import valid_hold_id, validate_hold_request, validate_idempotency_key

log = logging.getLogger(__name__)


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

    on_committed(hold_ids, hold_expires_at), if given, is called once per committed transaction that
    created holds, outside the lock, by whichever buyer ran it: with the line that is one call for a
    whole batch (others' holds included), so per-batch work such as scheduling expiry is done once.
    """
    email, quantity = validate_hold_request(email, quantity, policy.max_quantity)
    idempotency_key = validate_idempotency_key(idempotency_key)
    sale = catalog.sale_info(session, product_ref)
    digest = request_digest(sale.id, email, quantity) if idempotency_key else None
    if idempotency_key and (replay := _replay(session, idempotency_key, digest)):
        return PlacedHold(replay, created=False)
    session.rollback()  # end the read transaction: nothing is held open while we wait for the lock

    # Cheap refusals first, with this process's clock; the database clock decides under the lock.
    _check_sale_window(sale.sale_starts_at, sale.sale_ends_at, datetime.now(timezone.utc))
    if quantity > sale.max_per_customer:
        raise LimitExceeded(limit=sale.max_per_customer)
    if probe_sold_out and soldout.is_marked(redis, sale.id):
        raise SoldOut(fast=True)

    return _place_in_line(session, redis, sale.id, email, quantity, policy, idempotency_key, digest,
                          on_committed)


def _place_in_line(session, redis, product_id, email, quantity, policy, key, digest, on_committed):
    """Join the product's line; serve batches of it whenever we hold the lock."""
    ticket = secrets.token_hex(8)
    request = line.Request(ticket, email, quantity, key, digest,
                           time.time() + policy.lock_wait_ms / 1000, new_hold_id())
    lock = ProductLock(redis, product_id, policy.lock_ttl_ms, policy.lock_wait_ms,
                       refuse_if=keys.sold_out(product_id),
                       read_with=keys.stock_generation(product_id),
                       line_entry=request.encode(), reply_key=keys.line_reply(product_id, ticket),
                       batch=line.BATCH)
    try:
        answer = _wait_in_line(session, redis, product_id, lock, ticket, policy, on_committed)
    except (RedisError, LockBusy) as failure:
        # Redis went away while we were in line, or a holder took our request and never answered: it
        # may have committed our hold all the same. A 503 must mean "nothing changed", so only the
        # database can settle it.
        unsettled = isinstance(failure, RedisError) and lock.joined
        if not (unsettled or lock.unanswered):
            raise
        if (order := _committed_hold(session, product_id, request.hold_id, request.deadline)) is None:
            raise
        return PlacedHold(order, True, lock.waited_ms)
    if isinstance(answer, line.Created):
        order = _attach(session, Order(
            id=answer.hold_id, product_id=product_id, customer_email=email, quantity=quantity,
            status=PENDING, hold_expires_at=answer.hold_expires_at, created_at=answer.created_at,
            confirmation_requested_at=None, confirmed_at=None, idempotency_key=key,
            request_digest=digest))
        return PlacedHold(order, True, lock.waited_ms)
    if isinstance(answer, line.Replayed):
        return PlacedHold(get_hold(session, answer.hold_id), False, lock.waited_ms)
    raise answer


def _wait_in_line(session, redis, product_id, lock, ticket, policy, on_committed):
    """Our answer: from a holder's reply, or from serving the line ourselves when we get the lock."""
    while True:
        try:
            lock.acquire()
        except LockRefused:
            # Marked sold out while we waited: the attempt that saw the mark took us out of the line.
            raise SoldOut(fast=True) from None
        if lock.reply is not None:
            return line.decode_answer(lock.reply)
        answer = _serve_line(session, redis, product_id, lock, ticket, policy, on_committed)
        if answer is not None:
            return answer
        if lock.past_deadline():
            # Our request was in nobody's batch and the wait is over: out of the line, or (if a
            # holder has it) its answer.
            if not lock.served_after_deadline():
                raise LockBusy(waited_ms=lock.waited_ms)
            return line.decode_answer(lock.reply)


def _committed_hold(session, product_id, hold_id, deadline):
    """Our hold if a holder committed it, else None, and then no holder ever will.

    Holders refuse a request whose deadline is past by the database clock read under the row lock
    (line._decide). So: wait until the database clock is past our deadline, take the row lock (which
    waits out any holder that read the clock in time), and look. On SQLite the transaction's BEGIN
    IMMEDIATE takes the writer lock, which waits out the holder just the same (FOR UPDATE renders as
    nothing there).
    """
    session.rollback()
    wait_until_past(session, deadline + 0.001)
    session.execute(select(Product.id).where(Product.id == product_id).with_for_update())
    found = session.execute(select(Order.id).where(Order.id == hold_id)).scalar_one_or_none()
    session.rollback()
    return get_hold(session, hold_id) if found else None


def _serve_line(session, redis, product_id, lock, ticket, policy, on_committed):
    """Holding the lock: serve a batch from the front of the line, release, answer the others.

    Returns our own answer, or None when our request was not in this batch (we wait again).
    """
    requests, answers = [], {}
    try:
        requests = [line.Request.decode(raw) for raw in lock.taken]
        if requests:
            hooked = after_row_lock is not None or policy.fault_delay_in_lock_ms
            first = requests[0].email
            pause = (lambda: _row_locked(product_id, first, policy)) if hooked else None
            generation = (lock.read_value or b"0").decode()
            answers = line.serve(session, redis, product_id, requests, policy.hold_seconds,
                                 generation, pause)
    except BaseException:
        _release(lock)
        line.answer(redis, product_id,
                    {r.ticket: Unavailable() for r in requests if r.ticket != ticket})
        if all(r.ticket != ticket for r in requests):
            _leave_line(lock)
        raise
    _release(lock)
    line.answer(redis, product_id, answers, own=ticket)  # and the batch's holds into the stock snapshot
    created = [a for a in answers.values() if isinstance(a, line.Created)]
    if created and on_committed:
        on_committed([a.hold_id for a in created], created[0].hold_expires_at)
    return answers.get(ticket)


def _release(lock):
    try:
        lock.release()
    except RedisError:
        # The batch is committed; the TTL frees the lock if Redis just went away.
        log.warning("could not release %s; it will lapse after %d ms", lock.key, lock.ttl_ms)


def _leave_line(lock):
    try:
        lock.leave_line()
    except RedisError:
        log.warning("could not leave the line of %s", lock.key)


# A seam for racing tests: when set, called as after_row_lock(product_id, email) right after the
# product's row lock is granted and before stock is read, on every backend.
after_row_lock = None


def _row_locked(product_id, email, policy):
    if after_row_lock is not None:
        after_row_lock(product_id, email)
    if policy.fault_delay_in_lock_ms:
        time.sleep(policy.fault_delay_in_lock_ms / 1000)  # test hook only (see HoldPolicy)


def _attach(session, order):
    """Put an order we just inserted into the session as if it had been loaded (no SELECT): every
    column must be given, or reading the missing one loads the row."""
    make_transient_to_detached(order)
    session.add(order)
    return order


def _check_sale_window(starts, ends, now):
    if refusal := line.sale_window_refusal(starts, ends, now):
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
    if order.status == PENDING and order.hold_expires_at <= now:
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
    snapshot.move(redis, won[0], expires=order.hold_expires_at, held=-won[1])
    return session.get(Order, hold_id, populate_existing=True), True
