"""How flashsale shows its records: JSON shapes (design section 7), ISO times, masked emails.

Below everything: the domain, the views, the gates and the jobs all shape their output here.
"""

import re
from datetime import datetime, timezone

EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")


def mask_email(email):
    """j***@example.com: enough to tell customers apart in a report or a log, not enough to contact them."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_emails(text):
    """Every email address in `text` masked as mask_email masks one."""
    return EMAIL_RE.sub(lambda found: mask_email(found.group(0)), text)

# A settled payment's status in the hold's JSON (design section 11), by Payment.state.
SETTLED_PAYMENT = {"captured": "captured", "refused": "refused", "voided": "canceled", "refunded": "refunded"}
SHOPPERS_TURN = ("requires_payment_method", "requires_action")


def iso(moment):
    """ISO 8601 UTC with a Z, or None."""
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def static_product_json(product):
    """The product's fields that only seeding changes (a stock snapshot keeps them as text)."""
    return {
        "id": product.id,
        "slug": product.slug,
        "name": product.name,
        "description": product.description,
        "price_cents": product.price_cents,
        "currency": product.currency,
        "total_stock": product.total_stock,
        "max_per_customer": product.max_per_customer,
        "sale_starts_at": iso(product.sale_starts_at),
        "sale_ends_at": iso(product.sale_ends_at),
        "waiting_room": bool(product.waiting_room),
    }


def polled_product_text(snap, poll_seconds):
    """A product as JSON text from its stock snapshot (the product shape plus poll_seconds), built
    without parsing: this is what thousands of watchers poll."""
    return (f'{snap.product_json[:-1]},"available":{snap.available},"state":"{snap.state}",'
            f'"poll_seconds":{poll_seconds}}}')


def hold_json(order, payment=None):
    """A hold: the order as its owner sees it, with its payment once a confirmation was accepted."""
    body = {
        "id": order.id,
        "product_id": order.product_id,
        "email": order.customer_email,
        "quantity": order.quantity,
        "status": order.status,
        "hold_expires_at": iso(order.hold_expires_at),
        "created_at": iso(order.created_at),
        "confirmation_requested_at": iso(order.confirmation_requested_at),
        "confirmed_at": iso(order.confirmed_at),
    }
    if payment is not None:
        body["payment"] = payment_json(payment)
    return body


def payment_status(payment):
    """processing | requires_payment_method | requires_action | captured | refused | canceled | refunded."""
    if payment.state in SETTLED_PAYMENT:
        return SETTLED_PAYMENT[payment.state]
    return payment.intent_status if payment.intent_status in SHOPPERS_TURN else "processing"


def payment_json(payment, now=None):
    """Where a hold's payment stands; the client secret only while the shopper can still act on it."""
    status = payment_status(payment)
    now = now or datetime.now(timezone.utc)
    open_ = status in SHOPPERS_TURN and (payment.action_deadline is None or now < payment.action_deadline)
    return {
        "status": status,
        "reference": payment.intent_id or payment.charge_ref,
        "client_secret": payment.client_secret if open_ else None,
        "action_deadline": iso(payment.action_deadline),
        "error": payment.last_error if status in SHOPPERS_TURN else None,  # the last card's refusal
    }


def ticket_json(ticket):
    """A waiting-room ticket (design section 10), with the line's size and when to ask again."""
    return {
        "id": ticket.id,
        "product_id": ticket.product_id,
        "email": ticket.email,
        "state": ticket.state,
        "position": ticket.position,
        "estimated_wait_seconds": ticket.estimated_wait_seconds,
        "admission": ticket.admission,
        "admission_expires_at": iso(ticket.admission_expires_at),
        "line_length": ticket.line_length,
        "admitted": ticket.admitted_total,
        "admission_rate": ticket.rate,
        "poll_seconds": ticket.poll_seconds,
        "joined_at": iso(ticket.joined_at),
        "admitted_at": iso(ticket.admitted_at),
    }
