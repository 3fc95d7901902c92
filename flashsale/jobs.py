"""Thin RQ entry points: each opens an app context and calls the domain in flashsale.inventory."""

import logging
import math
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone

from flask import current_app, has_app_context

from . import keys, metrics, payment_pool
from .extensions import db, redis_store
from .gateways import gateway_from_config
from .inventory import confirmation, expiry, payments

log = logging.getLogger(__name__)
_worker_app = None


@contextmanager
def _app_context():
    """The current app context (or one for an app built once per worker process, not at import), with
    a fresh database session per job: SimpleWorker runs every job in one long-lived context."""
    global _worker_app
    if has_app_context():
        context = nullcontext()
    else:
        if _worker_app is None:
            from . import create_app

            _worker_app = create_app()
        context = _worker_app.app_context()
    with context:
        try:
            yield
        finally:
            db.session.remove()


def _gateway_and_policy():
    config = current_app.config
    return gateway_from_config(config, redis_store.client), payments.PaymentPolicy.from_config(config)


def take_payment(hold_id):
    """Job: take the payment of an accepted confirmation, on the worker's payment pool if it has one."""
    pool = payment_pool.current()
    if pool is not None:
        pool.submit(pay, hold_id)
        return "handed to the payment pool"
    return pay(hold_id).outcome


def pay(hold_id):
    """Charge a hold's payment once and settle the hold (the work take_payment hands over)."""
    with _app_context():
        gateway, policy = _gateway_and_policy()
        settled = payments.take_payment(db.session, redis_store.client, hold_id, gateway, policy)
        metrics.record_payment(redis_store.client, settled)
        return settled


def confirm_hold(hold_id):
    """Job that releases before payments were recorded (revision 0003) queued for a confirm click:
    accept the confirmation if the hold is still live, then pay, so a confirmation queued then is kept."""
    with _app_context():
        try:
            accepted = confirmation.accept_confirmation(db.session, hold_id, redis_store.client)
        except Exception as refusal:  # noqa: BLE001 - a lapsed or released hold: nothing to pay
            log.info("old confirmation job for %s refused: %s", hold_id, refusal)
            return "refused"
        if accepted.hold.status != "CONFIRMING":
            return accepted.hold.status
    return pay(hold_id).outcome


def reconcile_payments():
    """Job: settle every payment whose attempt ran out of time, and give back captures owed."""
    with _app_context():
        session, redis = db.session, redis_store.client
        gateway, policy = _gateway_and_policy()
        for hold_id, key in payments.refunds_owed(session):
            charge = gateway.find(key)
            if charge is not None:
                payments.refund(session, hold_id, charge, gateway)
                metrics.record_outcome(redis, "refunded")
        due = payments.due_payments(session, policy)
    pool = payment_pool.current()
    for hold_id in due:
        if pool is not None:
            pool.submit(reconcile_one, hold_id)
        else:
            reconcile_one(hold_id)
    if due:
        log.info("reconciling %d payments", len(due))
    return len(due)


def reconcile_one(hold_id):
    """Settle one payment by asking the gateway about its key (the work reconcile_payments hands over)."""
    with _app_context():
        gateway, policy = _gateway_and_policy()
        settled = payments.reconcile_payment(db.session, redis_store.client, hold_id, gateway, policy)
        metrics.record_payment(redis_store.client, settled, reconciled=True)
        return settled


def expire_holds(hold_ids):
    """Job: record holds as EXPIRED at their expiry (a no-op for any confirmed or released first)."""
    with _app_context():
        session, redis = db.session, redis_store.client
        expired = sum(expiry.expire_hold(session, redis, hold_id) for hold_id in hold_ids)
        if expired:
            metrics.record_outcome(redis, "expired", expired)
        return expired


def sweep_expired_holds():
    """Job: record every lapsed hold a lost or late expire_hold job missed."""
    with _app_context():
        count = expiry.sweep_expired_holds(db.session, redis_store.client)
        if count:
            log.info("sweeper recorded %d expired holds", count)
            metrics.record_outcome(redis_store.client, "expired", count)
        return count


def expire_slot(second):
    """Job: record the holds of one expiry slot (schedule_expiries) as EXPIRED, at the slot's end."""
    with _app_context():
        redis = redis_store.client
        hold_ids = sorted(member.decode() for member in redis.smembers(keys.expiry_slot(second)))
        expired = expire_holds(hold_ids)
        redis.delete(keys.expiry_slot(second))
        return expired


def schedule_expiries(queue, hold_ids, hold_expires_at):
    """Put holds that lapse together (one batch of the line) in the expiry slot of the second they
    lapse in; the first batch of a slot also enqueues the slot's one expire_slot job, at the slot's
    end (needs a worker started with the scheduler). Job id: expire-<slot's epoch second>.

    One pipelined round trip per batch, and one RQ job per second of expiries however many batches
    (100 products selling at once make a batch per hold). A job lost before it was enqueued, or a
    worker that dies in it, leaves the holds to the sweeper, as any lost expiry job does.
    """
    second = math.ceil(hold_expires_at.timestamp())
    slot = keys.expiry_slot(second)
    keep = max(int(second - time.time()), 0) + SLOT_KEPT_SECONDS
    pipe = queue.connection.pipeline(transaction=False)
    pipe.sadd(slot, *hold_ids)
    pipe.expire(slot, keep)
    pipe.set(f"{slot}:job", 1, nx=True, ex=keep)
    if pipe.execute()[2]:
        queue.enqueue_at(datetime.fromtimestamp(second, timezone.utc), expire_slot, second,
                         job_id=expiry_job_id(second), result_ttl=60, failure_ttl=3600)
    return second


SLOT_KEPT_SECONDS = 3600  # a slot outlives its second by this much, for a late or retried job


def expiry_job_id(second):
    """The RQ job id of the expiry slot ending at `second`."""
    return f"expire-{second}"


def expiry_job_of(hold_expires_at):
    """The RQ job id that records a hold expiring at hold_expires_at."""
    return expiry_job_id(math.ceil(hold_expires_at.timestamp()))


def payment_job_id(hold_id):
    """The RQ job id of a hold's payment (one per hold: enqueuing it again replaces the same job)."""
    return f"pay-{hold_id}"


def enqueue_payment(queue, hold_id):
    """Enqueue take_payment for a hold whose confirmation was just accepted."""
    # No result is kept (result_ttl=0): the payments table is the record, and each write RQ skips is
    # a Redis round trip less per confirmation on the worker's one dequeuing thread.
    return queue.enqueue(take_payment, hold_id, job_id=payment_job_id(hold_id),
                         result_ttl=0, failure_ttl=3600)
