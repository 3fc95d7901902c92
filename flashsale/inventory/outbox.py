"""The outbox: the shop's events, written in the same transaction as the change that causes them.

An event exists exactly when its change committed: order.confirmed with the capture that made the hold
CONFIRMED, order.refunded with the payment recorded refunded, sale.sold_out with the confirmation that
took the sale's last unit. Nothing here sends anything: the worker delivers what the outbox holds
(inventory/deliveries.py, worker/webhooks.py), so a crash, a Redis restart or an endpoint that is down
loses no event. Each event's JSON body is fixed here, so every attempt at every endpoint sends, and
signs, the same bytes under the same webhook-id.

Callers have locked the product's row already (the lock order of ledger.py): these only insert into
webhook_events, which has no foreign keys, so they take no other row lock.
"""

import json
import secrets

from sqlalchemy import insert, select

from ..models import (
    ORDER_CONFIRMED,
    ORDER_REFUNDED,
    SALE_SOLD_OUT,
    Order,
    Payment,
    Product,
    WebhookEvent,
)
from ..serialise import hold_json, iso
from .clock import db_now

EVENTS = WebhookEvent.__table__


def new_webhook_id():
    """A Standard Webhooks message id: unique per event, the same on every retry."""
    return "msg_" + secrets.token_urlsafe(18)


def order_data(session, hold_id):
    """What the shop needs to ship and to match the payment: the hold JSON with the unmasked email, the
    product's slug, the amount, the currency and the payment's reference (as the transaction sees them)."""
    order = session.execute(select(Order).where(Order.id == hold_id)
                            .execution_options(populate_existing=True)).scalar_one()
    payment = session.execute(select(Payment).where(Payment.order_id == hold_id)
                              .execution_options(populate_existing=True)).scalar_one_or_none()
    slug, price, currency = session.execute(
        select(Product.slug, Product.price_cents, Product.currency).where(Product.id == order.product_id)).one()
    data = hold_json(order, payment)
    data["email"] = order.customer_email  # never masked: the shop ships to it
    data.update(product_slug=slug,
                amount_cents=payment.amount_cents if payment is not None else order.quantity * price,
                currency=payment.currency if payment is not None else currency,
                payment_reference=(payment.intent_id or payment.charge_ref) if payment is not None else None)
    return order.product_id, data


def order_confirmed(session, hold_id):
    """Write the hold's order.confirmed event in the transaction that made it CONFIRMED (the caller
    commits), then sale.sold_out if this confirmation took the sale's last unit."""
    product_id, data = order_data(session, hold_id)
    webhook_id = _write(session, ORDER_CONFIRMED, data, product_id, hold_id)
    # The transition locked the product's row and moved its counter in this transaction, so this read
    # is exact: only the confirmation that takes the last unit sees every unit confirmed (terminal
    # states never change, so the counter never falls back): one sale.sold_out per sale.
    confirmed, total = session.execute(select(Product.confirmed_units, Product.total_stock)
                                       .where(Product.id == product_id)).one()
    if confirmed >= total:
        sale_sold_out(session, product_id)
    return webhook_id


def order_refunded(session, hold_id):
    """Write the hold's order.refunded event in the caller's transaction (the caller commits)."""
    product_id, data = order_data(session, hold_id)
    return _write(session, ORDER_REFUNDED, data, product_id, hold_id)


def sale_sold_out(session, product_id):
    """Write the sale's sale.sold_out event in the caller's transaction (the caller commits)."""
    slug = session.execute(select(Product.slug).where(Product.id == product_id)).scalar_one()
    return _write(session, SALE_SOLD_OUT, {"product_id": product_id, "product_slug": slug}, product_id, None)


def _write(session, event_type, data, product_id, hold_id):
    now = db_now(session)
    body = json.dumps({"type": event_type, "timestamp": iso(now), "data": data}, separators=(",", ":"))
    webhook_id = new_webhook_id()
    session.execute(insert(EVENTS).values(
        webhook_id=webhook_id, type=event_type, hold_id=hold_id, product_id=product_id,
        ordering_key=f"hold:{hold_id}" if hold_id else f"sale:{product_id}", body=body, created_at=now,
        fanned_out=False))
    return webhook_id
