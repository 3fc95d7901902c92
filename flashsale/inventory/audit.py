"""Checking the invariants of design section 3 against the database: `flask audit` runs these."""

from dataclasses import dataclass

from sqlalchemy import and_, case, func, select

from ..models import CONFIRMED, HOLD_CREATED, PENDING, InventoryEvent, Order, Product
from .clock import now_expression
from .ledger import event_delta
from .stock import counts_against_stock

TERMINAL = ("CONFIRMED", "EXPIRED", "RELEASED")


@dataclass(frozen=True)
class Breach:
    """One broken invariant: which, where, and what was found."""

    invariant: str
    subject: str
    detail: str

    def __str__(self):
        return f"[{self.invariant}] {self.subject}: {self.detail}"


def audit(session):
    """Every breach of invariants 1, 3, 4, 5, 6 and 8 found in the database (empty when sound)."""
    now = now_expression(session)
    breaches = []
    breaches += _oversold(session, now)
    breaches += _outcomes(session)
    breaches += _ledger_balance(session)
    breaches += _confirmed_counters(session)
    breaches += _idempotency(session)
    breaches += _customer_limits(session, now)
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
    """Each hold: one HOLD_CREATED, one terminal event iff terminal and matching, deltas right."""
    breaches = []
    events = {}
    for order_id, etype, delta in session.execute(
        select(InventoryEvent.order_id, InventoryEvent.type, InventoryEvent.delta)
    ):
        events.setdefault(order_id, []).append((etype, delta))
    orders = session.execute(
        select(Order.id, Order.status, Order.quantity, Order.confirmed_at, Order.hold_expires_at)
    ).all()
    known = set()
    for order_id, status, quantity, confirmed_at, expires in orders:
        known.add(order_id)
        found = events.get(order_id, [])
        types = [etype for etype, _ in found]
        if types.count(HOLD_CREATED) != 1:
            breaches.append(Breach("8 nothing half-done", order_id,
                                   f"{types.count(HOLD_CREATED)} HOLD_CREATED events"))
        terminal = [t for t in types if t in TERMINAL]
        expected = [] if status == PENDING else [status]
        if terminal != expected:
            breaches.append(Breach("3 one outcome", order_id, f"status {status}, events {terminal}"))
        for etype, delta in found:
            if delta != event_delta(etype, quantity):
                breaches.append(Breach("4 ledger balance", order_id, f"{etype} has delta {delta}"))
        if status == CONFIRMED and (confirmed_at is None or confirmed_at >= expires):
            breaches.append(Breach("3 one outcome", order_id, "confirmed at or after its expiry"))
    for order_id in set(events) - known:
        breaches.append(Breach("8 nothing half-done", order_id, "events without an order"))
    return breaches


def _ledger_balance(session):
    """total_stock + sum(delta) must equal what remains once every PENDING hold is counted as held."""
    ledger = select(InventoryEvent.product_id, func.sum(InventoryEvent.delta).label("moved")) \
        .group_by(InventoryEvent.product_id).subquery()
    kept = select(
        Order.product_id,
        func.sum(case((Order.status.in_([PENDING, CONFIRMED]), Order.quantity), else_=0)).label("kept"),
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


def mask_email(email):
    """j***@example.com: enough to tell customers apart in a report, not enough to contact them."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"
