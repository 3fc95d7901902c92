"""POST /webhooks/stripe: Stripe's signed news about a PaymentIntent, as a nudge to read it again.

The signature (Stripe-Signature, STRIPE_WEBHOOK_SECRET) is checked first: missing, wrong or older than
five minutes, the answer is 400 and nothing changes. Each event id is handled once (a replay answers
200 and changes nothing). The payload is never trusted for what happened, nor for the order events
come in: the hold's intent is read again from Stripe and moved on by the same conditional updates as
the worker (inventory/intents.py). Lost or late webhooks cost nothing but time: the reconciler reads
every unsettled intent by its recorded id.
"""

import logging

from flask import Blueprint, abort, current_app, jsonify, request
from sqlalchemy import select

from .. import keys, metrics
from ..extensions import db, redis_store
from ..gateways import GatewayUnavailable, gateway_from_config
from ..gateways.stripe_settings import is_stripe
from ..inventory import intents
from ..models import Payment

log = logging.getLogger(__name__)
bp = Blueprint("stripe_webhooks", __name__)
HANDLED_SECONDS = 4 * 86400  # Stripe retries an event for up to three days


@bp.post("/webhooks/stripe")
def receive():
    """Verify, deduplicate, then read the event's intent again and move its hold on."""
    config = current_app.config
    if not is_stripe(config):
        abort(404)
    redis = redis_store.client
    gateway = gateway_from_config(config, redis)
    try:
        event = gateway.event(request.get_data(), request.headers.get("Stripe-Signature"))
    except ValueError as refused:
        log.warning("Stripe webhook refused: %s", refused)
        return jsonify(error={"code": "invalid_signature", "message": str(refused)}), 400
    if not event["type"].startswith("payment_intent."):
        return jsonify(received=True, handled=False)
    done = keys.stripe_event(event["id"])
    if not redis.set(done, 1, nx=True, ex=HANDLED_SECONDS):
        return jsonify(received=True, duplicate=True)
    try:
        outcome = _nudge(gateway, redis, event["data"]["object"]["id"], config)
    except Exception:
        redis.delete(done)  # not handled after all: Stripe's retry gets its turn
        raise
    if outcome == "pending":
        redis.delete(done)
        return jsonify(error={"code": "unavailable", "message": "Stripe did not answer; retry."}), 503
    return jsonify(received=True, outcome=outcome)


def _nudge(gateway, redis, intent_id, config):
    """Move on the hold whose intent this is (found by its recorded id, or, for an event that beat the
    record, by the metadata of the intent as Stripe has it now)."""
    session = db.session
    hold_id = session.execute(select(Payment.order_id).where(Payment.intent_id == intent_id)).scalar_one_or_none()
    session.rollback()
    if hold_id is None:
        try:
            hold_id = gateway.retrieve(intent_id).hold_id
        except GatewayUnavailable:
            return "pending"
        if not hold_id or not _has_payment(session, hold_id):
            return "ignored"
    progress = intents.advance(session, redis, hold_id, gateway, intents.PaymentPolicy.from_config(config))
    metrics.record_payment(redis, progress)
    return progress.outcome


def _has_payment(session, hold_id):
    found = session.execute(select(Payment.id).where(Payment.order_id == hold_id)).first() is not None
    session.rollback()
    return found
