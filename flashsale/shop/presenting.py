"""How holds and refusals read to a shopper: why a hold was released, and friendly messages."""

from sqlalchemy import select

from ..models import RELEASED, InventoryEvent


def release_reason(session, order):
    """Why a hold was released: "customer", "payment_refused", "payment_unfinished" or
    "payment_not_completed" (a card payment not authorised by its deadline), from its event."""
    metadata = session.execute(
        select(InventoryEvent.event_metadata).where(
            InventoryEvent.order_id == order.id, InventoryEvent.type == RELEASED)
    ).scalar_one_or_none()
    return (metadata or {}).get("reason", "customer")


def refusal_message(refusal):
    """A sentence for a shopper saying what happened and what to do next."""
    details = refusal.details
    if refusal.code == "sold_out":
        available = details.get("available")
        if available:
            return f"Not enough stock: only {available} left. Choose fewer and try again."
        return "Sold out: every unit is taken. Held units come back if their holds expire."
    if refusal.code == "limit_exceeded":
        return f"That would exceed the limit of {details.get('limit')} per customer for this sale."
    if refusal.code == "unavailable":
        return "So many buyers at once that we could not serve you in time. Please try again in a moment."
    if refusal.code == "idempotency_mismatch":
        return "This form was already sent with different details. Check them and send it again."
    if refusal.code == "hold_expired":
        return "This hold has expired, so it can no longer be confirmed. The units went back on sale."
    if refusal.code == "hold_released":
        return "This hold was released, so it can no longer be confirmed."
    if refusal.code == "hold_confirmed":
        return "This hold is already confirmed, so it cannot be released."
    if refusal.code == "not_admitted":
        return ("This sale has a waiting room: join the line below and buy when it is your turn. "
                + ("Your turn passed: an admission lasts a short while." if refusal.details.get("expired")
                   else ""))
    if refusal.code == "no_waiting_room":
        return "This sale has no waiting room: buy directly."
    if refusal.code == "payment_in_progress":
        return "Your confirmation was accepted and the payment is in progress, so it can no longer be released."
    return refusal.message
