"""The outbox's checks (design section 12): the shop hears of every confirmed order once, and of no other.

Events are written in the transaction that confirms the hold (inventory/outbox.py), so at any snapshot a
CONFIRMED hold has exactly one order.confirmed event, and no hold that is not CONFIRMED has one.
"""

from sqlalchemy import and_, func, select

from ...models import CONFIRMED, ORDER_CONFIRMED, Order, WebhookEvent
from .findings import Breach, check

TOLD = "12 the shop hears of every order"
W = WebhookEvent


@check(TOLD)
def confirmed_orders_announced(view):
    """CONFIRMED holds without exactly one order.confirmed event in the outbox."""
    events = func.count(W.id)
    query = (select(Order.id, events.label("events"))
             .outerjoin(W, and_(W.hold_id == Order.id, W.type == ORDER_CONFIRMED))
             .where(Order.status == CONFIRMED, view.holds()).group_by(Order.id).having(events != 1))
    count, rows = view.offending(query)
    return count, [Breach(TOLD, row.id, f"CONFIRMED with {row.events} order.confirmed events") for row in rows]


@check(TOLD)
def unconfirmed_orders_announced(view):
    """order.confirmed events of holds that are not CONFIRMED (the shop would ship what nobody paid for)."""
    query = (select(Order.id, Order.status).join(W, and_(W.hold_id == Order.id, W.type == ORDER_CONFIRMED))
             .where(Order.status != CONFIRMED, view.holds()))
    count, rows = view.offending(query)
    return count, [Breach(TOLD, row.id, f"{row.status} but announced as order.confirmed") for row in rows]
