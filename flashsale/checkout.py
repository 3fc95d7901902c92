"""Placing, confirming and releasing a hold for a request, the same way for the JSON API and the shop.

One sequence, written once (design section 4, step 5): the domain's `place_hold`, which calls back
to schedule expiry once per committed batch, then the metrics. Views only parse their input before
and shape their answer after.
"""

import time

from flask import current_app

from . import metrics
from .errors import FlashsaleError
from .extensions import db, redis_store
from .inventory import confirmation, holds
from .jobs import enqueue_payment, schedule_expiries


def place_hold(product_ref, email, quantity, idempotency_key=None):
    """Place a hold, schedule its expiry and record the outcome; refusals are recorded, then raised."""
    started = time.perf_counter()
    policy = holds.HoldPolicy.from_config(current_app.config)
    redis = redis_store.client
    try:
        placed = holds.place_hold(db.session, redis, product_ref, email, quantity, policy,
                                  idempotency_key, on_committed=schedule_expiry)
    except FlashsaleError as refusal:
        metrics.record_outcome(redis, outcome_name(refusal),
                               latency_ms=(time.perf_counter() - started) * 1000)
        raise
    if placed.created:
        metrics.record_outcome(redis, "created",
                               latency_ms=(time.perf_counter() - started) * 1000,
                               lock_wait_ms=placed.lock_wait_ms)
    return placed


def confirm_hold(hold_id):
    """Accept the shopper's confirmation (the promise is made when this returns) and queue the payment.

    Returns the Acceptance; refusals (HoldExpired, HoldReleased, NotFound) are raised. If Redis refuses
    the job, the promise stands all the same: reconciliation takes the payment once its lease is due.
    """
    accepted = confirmation.accept_confirmation(db.session, hold_id)
    if accepted.accepted_now:
        try:
            enqueue_payment(redis_store.queue, hold_id)
        except Exception:  # noqa: BLE001 - committed already; reconciliation picks the payment up
            current_app.logger.warning("could not queue the payment of an accepted confirmation")
        metrics.record_outcome(redis_store.client, "accepted")
    return accepted


def release_hold(hold_id):
    """Release a hold and count it once, however often the shopper clicks."""
    order, released_now = holds.release_hold_once(db.session, redis_store.client, hold_id)
    if released_now:
        metrics.record_outcome(redis_store.client, "released")
    return order, released_now


def schedule_expiry(hold_ids, hold_expires_at):
    """Schedule expiry for holds one transaction created (a whole batch at once); if Redis refuses,
    the sweeper and read-time expiry cover them."""
    try:
        schedule_expiries(redis_store.queue, hold_ids, hold_expires_at)
    except Exception:  # noqa: BLE001 - the holds are committed; expiry is already decided by the clock
        current_app.logger.warning("could not schedule expiry of %d holds", len(hold_ids))


def outcome_name(refusal):
    """The metrics outcome a refusal counts as."""
    return {"sold_out": "sold_out", "unavailable": "busy", "rate_limited": "rate_limited"}.get(
        refusal.code, "rejected")
