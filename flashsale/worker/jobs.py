"""Thin RQ entry points: each opens an app context and calls the domain in flashsale.inventory."""

import logging
import math
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone

from flask import current_app, has_app_context

from .. import keys, metrics
from ..extensions import db, redis_store
from ..gateways import gateway_from_config
from ..inventory import expiry, intents, payments
from ..web.logs import current_request_id
from . import payment_pool

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
    gateway = gateway_from_config(config, redis_store.client)
    return gateway, flow_of(gateway).PaymentPolicy.from_config(config)


def flow_of(gateway):
    """The payment flow a gateway takes: by PaymentIntent (Stripe: inventory/intents.py), or by one
    charge per key (the fake: inventory/payments.py). Both offer the same verbs."""
    return intents if getattr(gateway, "by_intent", False) else payments


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
        settled = flow_of(gateway).take_payment(db.session, redis_store.client, hold_id, gateway, policy)
        metrics.record_payment(redis_store.client, settled)
        log.info("payment taken: %s", settled.outcome)
        return settled


def reconcile_payments():
    """Job: settle every payment whose attempt ran out of time, and give back captures owed."""
    with _app_context():
        session, redis = db.session, redis_store.client
        gateway, policy = _gateway_and_policy()
        if flow_of(gateway) is intents:
            for hold_id in intents.refunds_owed(session):
                intents.refund_owed(session, hold_id, gateway)
                metrics.record_outcome(redis, "refunded")
        else:
            for hold_id, key in payments.refunds_owed(session):
                charge = gateway.find(key)
                if charge is not None:
                    payments.refund(session, hold_id, charge, gateway)
                    metrics.record_outcome(redis, "refunded")
        due = flow_of(gateway).due_payments(session, policy)
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
        settled = flow_of(gateway).reconcile_payment(db.session, redis_store.client, hold_id, gateway, policy)
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
    """Job: record the holds of one expiry slot (ExpirySlot) as EXPIRED, at the slot's end."""
    with _app_context():
        redis = redis_store.client
        hold_ids = sorted(member.decode() for member in redis.smembers(keys.expiry_slot(second)))
        expired = expire_holds(hold_ids)
        redis.delete(keys.expiry_slot(second))
        return expired


class ExpirySlot:
    """Holds that lapse in the same second, added to that second's expiry slot; the first batch of a
    slot also enqueues the slot's one expire_slot job, at the slot's end (needs a worker started with
    the scheduler). Job id: expire-<slot's epoch second>.

    The slot's three commands ride on a pipeline the caller runs (the line's holder sends them with its
    release and answers: one round trip per batch); enqueue_if_first then reads their replies. One RQ
    job per second of expiries however many batches (100 products selling at once make a batch per
    hold). A job lost before it was enqueued, or a worker that dies in it, leaves the holds to the
    sweeper, as any lost expiry job does.
    """

    def __init__(self, hold_ids, hold_expires_at):
        self.hold_ids = list(hold_ids)
        self.second = math.ceil(hold_expires_at.timestamp())
        self._first_reply = None

    def queue(self, pipe):
        """Queue the slot's commands on a pipeline (transaction=False)."""
        slot = keys.expiry_slot(self.second)
        keep = max(int(self.second - time.time()), 0) + SLOT_KEPT_SECONDS
        self._first_reply = len(pipe.command_stack)
        pipe.sadd(slot, *self.hold_ids)
        pipe.expire(slot, keep)
        pipe.set(f"{slot}:job", 1, nx=True, ex=keep)

    def enqueue_if_first(self, queue, replies):
        """After the pipeline ran (its replies): enqueue the slot's job if this batch opened the slot."""
        if replies[self._first_reply + 2]:
            queue.enqueue_at(datetime.fromtimestamp(self.second, timezone.utc), expire_slot, self.second,
                             job_id=expiry_job_id(self.second), result_ttl=60, failure_ttl=3600)


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
    # The request that accepted the confirmation names the job's log lines too (worker/runner.py).
    return queue.enqueue(take_payment, hold_id, job_id=payment_job_id(hold_id),
                         result_ttl=0, failure_ttl=3600, meta={"request_id": current_request_id.get()})
