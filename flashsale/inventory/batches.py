"""The batch queue at a product's lock: whoever holds the lock serves a batch of waiting buyers at once.

Each buyer joins the product's batch queue (a Redis list) with the same round trip as its first attempt
at the lock (locks.ProductLock). The buyer that takes the lock takes up to BATCH requests from the
front of the queue, decides each one in arrival order exactly as it would be decided alone
(Idempotency-Key, sale window, per-customer limit counting earlier buyers of the batch, stock), inserts
every accepted hold and its event in one statement (placement.py), commits once, releases the lock and
answers each buyer on its own reply list. Under a herd the serial section's fixed costs (lock hand-over,
thread wake-ups, round trips, the commit's flush) are paid once per batch instead of once per buyer;
alone, a buyer serves a batch of one. Holders of different products in one web process share a
transaction when they meet (combining.py), so many products on sale at once also pay one transaction
for many buyers.

A buyer whose answer never comes (Redis or the holder died) asks the database (`_committed`), so a 503
always means nothing changed (docs/threat-model.md).
"""

import logging
import secrets
from dataclasses import dataclass, replace
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from .. import errors, keys, lua
from ..errors import LockBusy, SoldOut, Unavailable
from ..models import Order, Product, new_hold_id
from . import combining, faults, movements, placement, soldout
from .clock import wait_until_past
from .line_messages import Created, Replayed, Request, decode_answer, encode_answer
from .locks import LockRefused, ProductLock

BATCH = 50  # requests served per lock acquisition (one statement inserts them all)
REPLY_TTL_MS = 60_000  # an answer nobody picks up (its buyer gave up) disappears

log = logging.getLogger(__name__)


def sale_window_refusal(starts, ends, now):
    """SaleNotOpen if `now` is outside the sale's window, else None."""
    if now < starts:
        return errors.SaleNotOpen("This sale has not started yet.", starts_at=starts.isoformat())
    if now >= ends:
        return errors.SaleNotOpen("This sale has ended.", ended_at=ends.isoformat())
    return None


def place(session, redis, product_id, email, quantity, policy, key, digest, on_committed, now):
    """Join the product's batch queue; serve batches of it whenever we hold the lock. Returns
    (Created or Replayed, ms waited for the lock), or raises the refusal.

    `now` is the database clock (clock.shared_time): the request's deadline is judged by whichever
    host serves its batch, against the database clock, so it must not come from this host's clock.
    """
    ticket = secrets.token_hex(8)
    request = Request(ticket, email, quantity, key, digest, now + policy.lock_wait_ms / 1000, new_hold_id())
    lock = ProductLock(redis, product_id, policy.lock_ttl_ms, policy.lock_wait_ms,
                       refuse_if=keys.sold_out(product_id),
                       read_with=keys.stock_generation(product_id),
                       queue_entry=request.encode(), reply_key=keys.batch_reply(product_id, ticket),
                       batch=BATCH)
    try:
        answer = _wait_for_answer(session, redis, product_id, lock, ticket, policy, on_committed)
    except (RedisError, LockBusy) as failure:
        # Redis went away while we were queued, or a holder took our request and never answered: it
        # may have committed our hold all the same. A 503 must mean "nothing changed", so only the
        # database can settle it.
        unsettled = isinstance(failure, RedisError) and lock.joined
        if not (unsettled or lock.unanswered):
            raise
        if (answer := _committed(session, product_id, request.hold_id, request.deadline)) is None:
            raise
    if isinstance(answer, Created | Replayed):
        return answer, lock.waited_ms
    raise answer


def _wait_for_answer(session, redis, product_id, lock, ticket, policy, on_committed):
    """Our answer: from a holder's reply, or from serving a batch ourselves when we get the lock."""
    while True:
        try:
            lock.acquire()
        except LockRefused:
            # Marked sold out while we waited: the attempt that saw the mark took us out of the queue.
            raise SoldOut(fast=True) from None
        if lock.reply is not None:
            return decode_answer(lock.reply)
        answer = _serve_batch(session, redis, product_id, lock, ticket, policy, on_committed)
        if answer is not None:
            return answer
        if lock.past_deadline():
            # Our request was in nobody's batch and the wait is over: out of the queue, or (if a
            # holder has it) its answer.
            if not lock.served_after_deadline():
                raise LockBusy(waited_ms=lock.waited_ms)
            return decode_answer(lock.reply)


def _committed(session, product_id, hold_id, deadline):
    """Created if a holder committed our hold, else None, and then no holder ever will.

    Holders refuse a request whose deadline is past by the database clock read under the row lock
    (_decide). So: wait until the database clock is past our deadline, take the row lock (which
    waits out any holder that read the clock in time), and look. On SQLite the transaction's BEGIN
    IMMEDIATE takes the writer lock, which waits out the holder just the same (FOR UPDATE renders as
    nothing there).
    """
    session.rollback()
    wait_until_past(session, deadline + 0.001)
    session.execute(select(Product.id).where(Product.id == product_id).with_for_update())
    found = session.execute(select(Order.hold_expires_at, Order.created_at, Order.quantity)
                            .where(Order.id == hold_id)).first()
    session.rollback()
    return Created(hold_id, *found) if found else None


def _serve_batch(session, redis, product_id, lock, ticket, policy, on_committed):
    """Holding the lock: serve a batch from the front of the queue, release, answer the others.

    Returns our own answer, or None when our request was not in this batch (we wait again).
    """
    requests = []
    try:
        requests = [Request.decode(raw) for raw in lock.taken]
        if requests:
            pause = faults.pause_under_row_lock(product_id, requests[0].email, policy)
            generation = (lock.read_value or b"0").decode()
            answers = serve(session, redis, product_id, requests, policy.hold_seconds, generation, pause,
                            Finish(product_id, lock, ticket, on_committed))
            return answers.get(ticket)
    except BaseException:
        _release(lock)
        answer(redis, product_id,
                    {r.ticket: Unavailable() for r in requests if r.ticket != ticket})
        if all(r.ticket != ticket for r in requests):
            _leave_queue(lock)
        raise
    _release(lock)  # nothing was waiting: the queue's entries were taken by a holder before us
    return None


@dataclass(frozen=True)
class Finish:
    """What a holder does after its batch's commit, queued on the round's one pipeline: release the lock
    (waking the next holder), answer the batch's other buyers, move its holds into the stock snapshot,
    and whatever on_committed queues (the expiry slot). Best effort: the lock lapses after its TTL,
    buyers without an answer ask the database, the snapshot is rebuilt and the sweeper expires what no
    slot holds."""

    product_id: int
    lock: ProductLock
    own: str  # the holder's own ticket: its answer is returned, not sent
    on_committed: object = None

    def queue(self, pipe, answers):
        """Queue it all on `pipe`; returns what to do with the pipeline's replies."""
        created = [a for a in answers.values() if isinstance(a, Created)]
        released = self.lock.queue_release(pipe)
        _queue_answers(pipe, self.product_id, answers, self.own, created)
        after = None
        if created and self.on_committed:
            after = self.on_committed(pipe, [a.hold_id for a in created], created[0].hold_expires_at)

        def read(replies):
            if not released(replies):
                log.warning("%s had lapsed before its holder released it", self.lock.key)
            if after is not None:
                after(replies)

        return read


def _finish_together(redis, batches, outcomes):
    """After a round's commit, one round trip for all its batches (Finish)."""
    finishing = [(b.finish, outcome[0]) for b, outcome in zip(batches, outcomes, strict=True)
                 if b.finish is not None and not isinstance(outcome, BaseException)]
    if not finishing:
        return
    try:
        pipe = redis.pipeline(transaction=False)
        afters = [finish.queue(pipe, answers) for finish, answers in finishing]
        replies = lua.execute(pipe)
    except RedisError:
        log.warning("could not release %s nor answer their buyers; the locks lapse after %d ms",
                    ", ".join(finish.lock.key for finish, _ in finishing), finishing[0][0].lock.ttl_ms)
        return
    for after in afters:
        after(replies)


def _release(lock):
    try:
        lock.release()
    except RedisError:
        # The batch is committed; the TTL frees the lock if Redis just went away.
        log.warning("could not release %s; it will lapse after %d ms", lock.key, lock.ttl_ms)


def _leave_queue(lock):
    try:
        lock.leave_queue()
    except RedisError:
        log.warning("could not leave the batch queue of %s", lock.key)


@dataclass(frozen=True)
class Batch:
    """One product's batch as its holder hands it to the process's combiner (combining.py)."""

    product_id: int
    requests: list
    hold_seconds: int
    generation: str = "0"  # the product's stock generation, read with the lock (soldout.mark_until)
    pause: object = None  # the fault hook run under the row locks (faults.pause_under_row_lock)
    finish: Finish | None = None


def serve(session, redis, product_id, requests, hold_seconds, generation, pause=None, finish=None):
    """Decide and commit a batch of requests under the product's lock; {ticket: answer}. `finish`, if
    given, is done after the commit (Finish).

    The transaction may serve other products' batches too, handed in by this process's other holders
    meanwhile, and finish them all in one round trip (combining.py)."""
    engine = session.get_bind()
    answers, _ = combining.combiner(engine).run(
        Batch(product_id, requests, hold_seconds, generation, pause, finish),
        lambda batches: _serve_and_finish(engine, redis, batches))
    return answers


def _serve_and_finish(engine, redis, batches):
    """A round: its transaction, then each product that sold out marked (before its lock is released,
    so the buyers queued behind it are refused at once), then the batches finished."""
    outcomes = _serve_together(engine, batches)
    for batch, outcome in zip(batches, outcomes, strict=True):
        if not isinstance(outcome, BaseException) and outcome[1] is not None:
            soldout.mark_until(redis, batch.product_id, batch.generation, *outcome[1])
    try:
        _finish_together(redis, batches, outcomes)
    except Exception:  # noqa: BLE001 - the holds are committed: a buyer left unanswered asks the database
        log.exception("could not finish a round of %d batches", len(batches))
    return outcomes


def _serve_together(engine, batches, impatient=None):
    """Decide and commit several products' batches in one transaction: for each batch, ({ticket:
    answer}, None or the (earliest hold expiry, now) that marks its product sold out), or the
    exception that failed it.

    impatient (the default with several batches): a row locked by another transaction is waited for
    only briefly (placement.SHARED_LOCK_WAIT); then the batches are served apart."""
    impatient = len(batches) > 1 if impatient is None else impatient
    pauses = [b.pause for b in batches if b.pause is not None]
    try:
        with placement.batch_transaction(engine) as transaction:
            sales = transaction.lock_and_read(
                {b.product_id for b in batches}, {r.email for b in batches for r in b.requests},
                {r.key for b in batches for r in b.requests if r.key},
                (lambda: [pause() for pause in pauses]) if pauses else None, impatient)
            outcomes, accepted, now = [], [], None
            for b in batches:
                sale = sales.get(b.product_id)
                if sale is None:
                    outcomes.append(({r.ticket: errors.NotFound("No such product.") for r in b.requests}, None))
                    continue
                now = sale.now
                outcomes.append(_decided(sale, b, accepted))
            transaction.insert_and_commit(accepted, now)
    except OperationalError as waited:
        if len(batches) == 1 or not placement.lock_not_available(waited):
            raise
        # A row of one of these products is locked by another transaction: the others must not wait
        # for it.
        return _serve_apart(engine, batches)
    except IntegrityError as collision:
        # A concurrent request with one of these Idempotency-Keys, for another product, committed
        # first (or two batches here carry the same key): serve the batches, then their requests, one
        # by one, so only the request that collided is affected.
        if len(batches) > 1:
            return _serve_apart(engine, batches)
        (batch,) = batches
        if len(batch.requests) > 1:
            alone = [_serve_together(engine, [replace(batch, requests=[r])])[0] for r in batch.requests]
            sold_out = [mark for _, mark in alone if mark is not None]
            return [({t: a for answers, _ in alone for t, a in answers.items()}, (sold_out or [None])[-1])]
        request = batch.requests[0]
        return [({request.ticket: _replay_after_collision(engine, request, collision)}, None)]
    return outcomes


def _serve_apart(engine, batches):
    """Each batch in its own transaction, a failure failing only its own batch: first every batch
    whose product's row is free, then, waiting for their rows, the others."""
    outcomes, busy = {}, []
    for n, batch in enumerate(batches):
        try:
            outcomes[n] = _serve_together(engine, [batch], impatient=True)[0]
        except OperationalError as waited:
            if placement.lock_not_available(waited):
                busy.append(n)
            else:
                outcomes[n] = waited
        except Exception as failure:  # noqa: BLE001 - it is this batch's answer, raised in its thread
            outcomes[n] = failure
    for n in busy:
        try:
            outcomes[n] = _serve_together(engine, [batches[n]], impatient=False)[0]
        except Exception as failure:  # noqa: BLE001 - as above
            outcomes[n] = failure
    return [outcomes[n] for n in range(len(batches))]


def _decided(sale, batch, accepted):
    """One batch's answers and sold-out mark; its accepted holds are appended to `accepted`."""
    expires = sale.now + timedelta(seconds=batch.hold_seconds)
    answers, taken, available, refused_for_stock = _decide(sale, batch.requests, expires)
    accepted.extend((hold_id, batch.product_id, email, quantity, key, digest, expires)
                    for hold_id, email, quantity, key, digest in taken)
    if refused_for_stock or (taken and available <= 0):
        earliest = min(filter(None, [sale.earliest_hold_expiry, expires if taken else None]), default=None)
        return answers, (earliest, sale.now)
    return answers, None


def _decide(sale, requests, expires):
    """Each request's answer in arrival order, the holds to insert, and the stock left after them."""
    available = sale.total_stock - sale.taken
    holding = dict(sale.by_customer)
    used_keys = dict(sale.used_keys)
    answers, accepted, refused_for_stock = {}, [], False
    # Deadlines are judged by the database clock read after the row lock (on SQLite: the writer lock)
    # was granted. A buyer that gets no answer waits until the database clock is past its deadline,
    # then takes the row lock and looks for its hold (holds._committed_hold): a holder that read the
    # clock before the deadline still holds the row lock then, so the buyer sees its commit; one that
    # reads it later refuses.
    db_clock = sale.now.timestamp()
    for r in requests:
        if r.deadline <= db_clock:  # its buyer has given up waiting
            answers[r.ticket] = errors.LockBusy()
            continue
        if r.key and r.key in used_keys:
            hold_id, digest = used_keys[r.key]
            answers[r.ticket] = Replayed(hold_id) if digest == r.digest else errors.IdempotencyMismatch()
            continue
        refusal = sale_window_refusal(sale.sale_starts_at, sale.sale_ends_at, sale.now)
        mine = holding.get(r.email, 0)
        if refusal is None and mine + r.quantity > sale.max_per_customer:
            refusal = errors.LimitExceeded(limit=sale.max_per_customer, holding=mine)
        if refusal is None and available < r.quantity:
            refusal = errors.SoldOut(available=max(available, 0))
            refused_for_stock = refused_for_stock or available <= 0
        if refusal is not None:
            answers[r.ticket] = refusal
            continue
        hold_id = r.hold_id
        available -= r.quantity
        holding[r.email] = mine + r.quantity
        if r.key:
            used_keys[r.key] = (hold_id, r.digest)
        accepted.append((hold_id, r.email, r.quantity, r.key, r.digest))
        answers[r.ticket] = Created(hold_id, expires, sale.now, r.quantity)
    return answers, accepted, available, refused_for_stock


def _replay_after_collision(engine, request, collision):
    if not request.key:
        raise collision  # not an Idempotency-Key race: a bug, let it surface
    with engine.connect() as connection:
        used = connection.execute(select(Order.id, Order.request_digest)
                                  .where(Order.idempotency_key == request.key)).first()
    if used is None:
        return errors.Unavailable()
    return Replayed(used[0]) if used[1] == request.digest else errors.IdempotencyMismatch()


def answer(redis, product_id, answers, own=None):
    """Push each answer but the holder's own (ticket `own`) to its buyer's reply list, in one round
    trip (best effort: buyers time out)."""
    if not any(t != own for t in answers):
        return
    try:
        pipe = redis.pipeline(transaction=False)
        _queue_answers(pipe, product_id, answers, own, [])
        lua.execute(pipe)
    except RedisError:
        log.warning("could not answer %d buyers of product %s", len(answers), product_id)


def _queue_answers(pipe, product_id, answers, own, created):
    """Queue each answer but the holder's own on its buyer's reply list, and the batch's new holds
    (`created`) into the stock snapshot (rebuilt within snapshot.MAX_AGE_SECONDS if this is lost)."""
    for ticket, outcome in answers.items():
        if ticket != own:
            reply = keys.batch_reply(product_id, ticket)
            pipe.lpush(reply, encode_answer(outcome))
            pipe.pexpire(reply, REPLY_TTL_MS)
    if created:  # the stock moved: one commit, one expiry for the whole batch
        movements.move_in(pipe, product_id, created[0].hold_expires_at, sum(a.quantity for a in created))
