"""Thin RQ entry points: each opens an app context and calls the domain in flashsale.inventory."""

import logging
from contextlib import contextmanager, nullcontext

from flask import current_app, has_app_context

from . import metrics
from .extensions import db, redis_store
from .inventory import expiry, holds
from .payments import gateway_from_config

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


def confirm_hold(hold_id):
    """Job: charge and confirm a hold (or release it if payment is refused)."""
    with _app_context():
        gateway = gateway_from_config(current_app.config)
        order = holds.confirm_hold(db.session, redis_store.client, hold_id, gateway)
        metrics.record_outcome(redis_store.client, order.status.lower())
        return order.status


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


def schedule_expiries(queue, hold_ids, hold_expires_at):
    """Enqueue one expire_holds job for holds that lapse together (one batch of the line), to run at
    their expiry (needs a worker started with the scheduler). Job id: expire-<first hold id>."""
    return queue.enqueue_at(hold_expires_at, expire_holds, list(hold_ids),
                            job_id=f"expire-{hold_ids[0]}", result_ttl=60, failure_ttl=3600)


def confirmation_job_id(hold_id):
    """The RQ job id of a hold's confirmation (one per hold: a second click re-enqueues the same job)."""
    return f"confirm-{hold_id}"


def enqueue_confirmation(queue, order):
    """Enqueue confirm_hold for a hold; the job is idempotent, so a second click is harmless."""
    return queue.enqueue(confirm_hold, order.id, job_id=confirmation_job_id(order.id),
                         result_ttl=300, failure_ttl=3600)
