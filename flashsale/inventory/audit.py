"""Checking the invariants of design section 3 against the database: `flask audit` runs these."""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, case, func, select

from ..models import (
    CAPTURED,
    CONFIRMED,
    CONFIRMING,
    EXPIRED,
    HOLD_CREATED,
    PENDING,
    REFUNDED,
    REFUSED,
    RELEASED,
    STARTED,
    VOIDED,
    InventoryEvent,
    Order,
    Payment,
    Product,
)
from .clock import db_now, now_expression
from .ledger import event_delta
from .stock import counts_against_stock

# The events after HOLD_CREATED that each status allows, in order.
OUTCOME_EVENTS = {
    PENDING: [[]],
    CONFIRMING: [[CONFIRMING]],
    CONFIRMED: [[CONFIRMING, CONFIRMED]],
    EXPIRED: [[EXPIRED]],
    RELEASED: [[RELEASED], [CONFIRMING, RELEASED]],  # released by the shopper, or payment refused
}


@dataclass(frozen=True)
class Breach:
    """One broken invariant: which, where, and what was found."""

    invariant: str
    subject: str
    detail: str

    def __str__(self):
        return f"[{self.invariant}] {self.subject}: {self.detail}"


def audit(session, gateway=None, final_seconds=None):
    """Every breach of invariants 1, 3, 4, 5, 6, 8 and 9 found in the database (empty when sound).

    gateway: also compare the gateway's own charges with the holds (when it can list them).
    final_seconds: PAYMENT_FINAL_SECONDS; a hold CONFIRMING longer than that (plus a minute for the
    reconciler to get round to it) is a payment nobody settled.
    """
    now = now_expression(session)
    breaches = []
    breaches += _oversold(session, now)
    breaches += _outcomes(session)
    breaches += _ledger_balance(session)
    breaches += _confirmed_counters(session)
    breaches += _idempotency(session)
    breaches += _customer_limits(session, now)
    breaches += _money(session, final_seconds)
    if gateway is not None and hasattr(gateway, "charges"):
        breaches += _gateway_money(session, gateway)
    session.rollback()
    return breaches


def _oversold(session, now):
    taken = func.coalesce(func.sum(Order.quantity), 0)
    rows = session.execute(
        select(Product.slug, Product.total_stock, taken)
        .outerjoin(Order, and_(Order.product_id == Product.id, counts_against_stock(now)))
        .group_by(Product.id, Product.slug, Product.total_stock)
        .having(taken > Product.total_stock)
    )
    return [Breach("1 no oversell", slug, f"{units} units taken of {total}")
            for slug, total, units in rows]


def _outcomes(session):
    """Each hold: one HOLD_CREATED, then exactly the events its status allows, deltas right, and a
    confirmation only if it was accepted before the hold's expiry."""
    breaches = []
    events = {}
    for order_id, etype, delta in session.execute(
        select(InventoryEvent.order_id, InventoryEvent.type, InventoryEvent.delta)
        .order_by(InventoryEvent.id)
    ):
        events.setdefault(order_id, []).append((etype, delta))
    orders = session.execute(
        select(Order.id, Order.status, Order.quantity, Order.confirmation_requested_at,
               Order.hold_expires_at)
    ).all()
    known = set()
    for order_id, status, quantity, requested_at, expires in orders:
        known.add(order_id)
        found = events.get(order_id, [])
        types = [etype for etype, _ in found]
        if types.count(HOLD_CREATED) != 1:
            breaches.append(Breach("8 nothing half-done", order_id,
                                   f"{types.count(HOLD_CREATED)} HOLD_CREATED events"))
        after = [t for t in types if t != HOLD_CREATED]
        if after not in OUTCOME_EVENTS.get(status, []):
            breaches.append(Breach("3 one outcome", order_id, f"status {status}, events {after}"))
        for etype, delta in found:
            if delta != event_delta(etype, quantity):
                breaches.append(Breach("4 ledger balance", order_id, f"{etype} has delta {delta}"))
        if CONFIRMING in after and (requested_at is None or requested_at >= expires):
            breaches.append(Breach("3 one outcome", order_id,
                                   "confirmation accepted at or after its expiry"))
    for order_id in set(events) - known:
        breaches.append(Breach("8 nothing half-done", order_id, "events without an order"))
    return breaches


def _ledger_balance(session):
    """total_stock + sum(delta) must equal what remains once every PENDING hold is counted as held."""
    ledger = select(InventoryEvent.product_id, func.sum(InventoryEvent.delta).label("moved")) \
        .group_by(InventoryEvent.product_id).subquery()
    kept = select(
        Order.product_id,
        func.sum(case((Order.status.in_([PENDING, CONFIRMING, CONFIRMED]), Order.quantity),
                      else_=0)).label("kept"),
    ).group_by(Order.product_id).subquery()
    rows = session.execute(
        select(Product.slug, Product.total_stock,
               func.coalesce(ledger.c.moved, 0), func.coalesce(kept.c.kept, 0))
        .outerjoin(ledger, ledger.c.product_id == Product.id)
        .outerjoin(kept, kept.c.product_id == Product.id)
    )
    return [Breach("4 ledger balance", slug,
                   f"ledger says {total + moved} available, orders say {total - held}")
            for slug, total, moved, held in rows if total + moved != total - held]


def _confirmed_counters(session):
    """Each product's confirmed_units counter (what derived stock reads) equals its CONFIRMED orders."""
    confirmed = select(Order.product_id, func.sum(Order.quantity).label("units")) \
        .where(Order.status == CONFIRMED).group_by(Order.product_id).subquery()
    rows = session.execute(
        select(Product.slug, Product.confirmed_units, func.coalesce(confirmed.c.units, 0))
        .outerjoin(confirmed, confirmed.c.product_id == Product.id)
    )
    return [Breach("4 ledger balance", slug, f"confirmed_units says {counter}, orders say {units}")
            for slug, counter, units in rows if counter != units]


def _idempotency(session):
    rows = session.execute(
        select(Order.idempotency_key, func.count())
        .where(Order.idempotency_key.is_not(None))
        .group_by(Order.idempotency_key)
        .having(func.count() > 1)
    )
    return [Breach("5 idempotency", key, f"{count} holds share this key") for key, count in rows]


def _customer_limits(session, now):
    taken = func.sum(Order.quantity)
    rows = session.execute(
        select(Product.slug, Order.customer_email, taken, Product.max_per_customer)
        .join(Product, Product.id == Order.product_id)
        .where(counts_against_stock(now))
        .group_by(Product.slug, Order.customer_email, Product.max_per_customer)
        .having(taken > Product.max_per_customer)
    )
    return [Breach("6 per-customer limit", f"{slug} / {mask_email(email)}",
                   f"{units} units, limit {limit}") for slug, email, units, limit in rows]


# The payment states each hold status allows (None: no payment).
PAYMENT_STATES = {
    PENDING: {None}, EXPIRED: {None}, CONFIRMING: {STARTED}, CONFIRMED: {CAPTURED},
    RELEASED: {None, REFUSED, VOIDED, REFUNDED},
}


def _money(session, final_seconds):
    """Invariant 9 from our side: a CONFIRMED hold has a captured payment and a captured payment a
    CONFIRMED hold, each confirmation has one payment, and none stays unsettled past the deadline."""
    breaches = []
    rows = session.execute(
        select(Order.id, Order.status, Order.confirmation_requested_at, Payment.state,
               func.count(Payment.id).over(partition_by=Order.id))
        .outerjoin(Payment, Payment.order_id == Order.id)
        .where(Payment.id.is_not(None) | Order.status.in_([CONFIRMING, CONFIRMED]))
    ).all()
    now = db_now(session)
    for order_id, status, requested_at, state, payments in rows:
        if payments > 1:
            breaches.append(Breach("9 money follows the outcome", order_id, f"{payments} payments"))
        if state not in PAYMENT_STATES.get(status, set()):
            owed = " (refund owed)" if state == CAPTURED else ""
            breaches.append(Breach("9 money follows the outcome", order_id,
                                   f"{status} hold with payment {state or 'missing'}{owed}"))
        elif state is not None and requested_at is None:
            breaches.append(Breach("9 money follows the outcome", order_id,
                                   "a payment for a hold whose confirmation was never accepted"))
        if (status == CONFIRMING and final_seconds is not None and requested_at is not None
                and now - requested_at > timedelta(seconds=final_seconds + 60)):
            breaches.append(Breach("9 money follows the outcome", order_id,
                                   f"CONFIRMING for {(now - requested_at).total_seconds():.0f} s, past "
                                   f"the final deadline of {final_seconds:g} s"))
    return breaches


def _gateway_money(session, gateway):
    """Invariant 9 from the gateway's side: every capture it holds is a CONFIRMED hold (or one still
    CONFIRMING, about to be), and every CONFIRMED hold's payment is captured there, not refunded."""
    breaches = []
    ours = {key: (order_id, status) for key, order_id, status in session.execute(
        select(Payment.idempotency_key, Order.id, Order.status).join(Order, Order.id == Payment.order_id))}
    listed = gateway.charges()
    charges = {charge.key: charge for charge in listed}
    captures_per_hold = {}
    for charge in listed:
        if charge.status in (CAPTURED, REFUNDED) and charge.reference:
            captures_per_hold.setdefault(charge.reference, []).append(charge.id)
    for hold_id, taken in captures_per_hold.items():
        if len(taken) > 1:
            breaches.append(Breach("9 money follows the outcome", hold_id,
                                   f"charged {len(taken)} times at the gateway"))
    for key, charge in charges.items():
        order_id, status = ours.get(key, (key, None))
        if charge.status == CAPTURED and status not in (CONFIRMED, CONFIRMING):
            breaches.append(Breach("9 money follows the outcome", order_id,
                                   f"the gateway holds a capture for a {status or 'unknown'} hold"))
        if charge.status == REFUNDED and status == CONFIRMED:
            breaches.append(Breach("9 money follows the outcome", order_id,
                                   "CONFIRMED but the gateway refunded its charge"))
    confirmed = session.execute(
        select(Payment.idempotency_key, Order.id).join(Order, Order.id == Payment.order_id)
        .where(Order.status == CONFIRMED, Payment.charge_ref.not_like("backfilled-%"))).all()
    for key, order_id in confirmed:
        if key not in charges:
            breaches.append(Breach("9 money follows the outcome", order_id,
                                   "CONFIRMED but the gateway holds no charge for it"))
    return breaches


def mask_email(email):
    """j***@example.com: enough to tell customers apart in a report, not enough to contact them."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"
