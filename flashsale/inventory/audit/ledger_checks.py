"""The ledger's checks (invariants 3, 4 and 8): each hold's events, their deltas, each sale's balance.

Each is one SQL statement over the snapshot that returns only the offending rows (a sample and their
count), so what the database sends back, and what Python holds, does not grow with the sale's history.
"""

from itertools import pairwise

from sqlalchemy import and_, case, exists, func, not_, or_, select

from ...models import (
    CONFIRMED,
    CONFIRMING,
    EVENT_TYPES,
    EXPIRED,
    HOLD_CREATED,
    PENDING,
    RELEASED,
    InventoryEvent,
    Order,
    Product,
)
from ..ledger import event_delta
from .findings import Breach, check

HALF_DONE, ONE_OUTCOME, BALANCE = "8 nothing half-done", "3 one outcome", "4 ledger balance"
E = InventoryEvent

# The events after HOLD_CREATED that each status allows, in order (each type at most once).
OUTCOME_EVENTS = {
    PENDING: [[]],
    CONFIRMING: [[CONFIRMING]],
    CONFIRMED: [[CONFIRMING, CONFIRMED]],
    EXPIRED: [[EXPIRED]],
    RELEASED: [[RELEASED], [CONFIRMING, RELEASED]],  # released by the shopper, or payment refused
}
FOLLOWING = tuple(t for t in EVENT_TYPES if t != HOLD_CREATED)
# Statuses whose units the ledger still shows taken: a lapsed PENDING hold counts until it is recorded
# EXPIRED (invariant 4 is stated "once every lapsed hold is recorded").
KEPT = (PENDING, CONFIRMING, CONFIRMED)
# The delta each event type must carry, per unit of the hold's quantity (ledger.event_delta's rule).
EXPECTED_DELTA = case({t: event_delta(t, 1) for t in EVENT_TYPES}, value=E.type) * Order.quantity


@check(HALF_DONE)
def holds_without_one_creation(view):
    """Holds with no HOLD_CREATED event, or more than one."""
    created = func.count(E.id)
    query = (select(Order.id, created.label("created"))
             .outerjoin(E, and_(E.order_id == Order.id, E.type == HOLD_CREATED))
             .where(view.holds()).group_by(Order.id).having(created != 1))
    count, rows = view.offending(query)
    return count, [Breach(HALF_DONE, row.id, f"{row.created} HOLD_CREATED events") for row in rows]


@check(HALF_DONE)
def events_without_a_hold(view):
    """Ledger events whose hold does not exist."""
    query = select(E.order_id, E.id, E.type).where(view.of_products(E.product_id),
                                                   ~exists().where(Order.id == E.order_id))
    count, rows = view.offending(query)
    return count, [Breach(HALF_DONE, row.order_id, f"a {row.type} event without its hold") for row in rows]


def _tally(event_type):
    return func.count(E.id).filter(E.type == event_type)


def _first(event_type):
    return func.coalesce(func.min(E.id).filter(E.type == event_type), 0)


def _follows(sequence):
    """The hold's events after HOLD_CREATED are exactly `sequence`, in that order."""
    return and_(*(_tally(t) == sequence.count(t) for t in FOLLOWING),
                *(_first(a) < _first(b) for a, b in pairwise(sequence)))


@check(ONE_OUTCOME)
def outcomes(view):
    """Holds whose events do not tell their status's story, or confirmed after their expiry."""
    as_told = or_(*(and_(Order.status == status, _follows(sequence))
                    for status, sequences in OUTCOME_EVENTS.items() for sequence in sequences))
    late = and_(_tally(CONFIRMING) > 0, or_(Order.confirmation_requested_at.is_(None),
                                            Order.confirmation_requested_at >= Order.hold_expires_at))
    query = (select(Order.id, Order.status, not_(as_told).label("untold"), late.label("late"))
             .outerjoin(E, and_(E.order_id == Order.id, E.type != HOLD_CREATED))
             .where(view.holds())
             .group_by(Order.id, Order.status, Order.confirmation_requested_at, Order.hold_expires_at)
             .having(or_(not_(as_told), late)))
    count, rows = view.offending(query)
    told = _events_of(view, [row.id for row in rows])
    sample = []
    for row in rows:
        if row.untold:
            sample.append(Breach(ONE_OUTCOME, row.id, f"status {row.status}, events {told.get(row.id, [])}"))
        if row.late:
            sample.append(Breach(ONE_OUTCOME, row.id, "confirmation accepted at or after its expiry"))
    return count, sample


def _events_of(view, hold_ids):
    """{hold id: [event type after HOLD_CREATED, ...]} for a few holds, oldest first."""
    told = {}
    for order_id, event_type in view.connection.execute(
            select(E.order_id, E.type).where(E.order_id.in_(hold_ids), E.type != HOLD_CREATED).order_by(E.id)):
        told.setdefault(order_id, []).append(event_type)
    return told


@check(BALANCE)
def wrong_deltas(view):
    """Events whose delta is not what their type and the hold's quantity make it, or recorded against
    another product than their hold's (the sale's balance would hide both)."""
    elsewhere = E.product_id != Order.product_id
    query = (select(E.order_id, E.type, E.delta, elsewhere.label("elsewhere"))
             .join(Order, Order.id == E.order_id)
             .where(view.holds(), or_(E.delta != EXPECTED_DELTA, elsewhere)))
    count, rows = view.offending(query)
    return count, [Breach(BALANCE, row.order_id, f"{row.type} recorded against another product"
                          if row.elsewhere else f"{row.type} has delta {row.delta}") for row in rows]


@check(BALANCE)
def sale_balances(view):
    """Sales where total_stock + sum(delta) differs from what remains once every PENDING hold is
    counted as held."""
    moved = (select(E.product_id, func.sum(E.delta).label("units")).where(view.of_products(E.product_id))
             .group_by(E.product_id).subquery())
    kept = (select(Order.product_id, func.sum(Order.quantity).label("units"))
            .where(Order.status.in_(KEPT), view.of_products(Order.product_id))
            .group_by(Order.product_id).subquery())
    moved_units, kept_units = func.coalesce(moved.c.units, 0), func.coalesce(kept.c.units, 0)
    query = (select(Product.slug, Product.total_stock, moved_units.label("moved"), kept_units.label("kept"))
             .outerjoin(moved, moved.c.product_id == Product.id)
             .outerjoin(kept, kept.c.product_id == Product.id)
             .where(view.products(), moved_units != -kept_units))
    count, rows = view.offending(query)
    return count, [Breach(BALANCE, row.slug, f"ledger says {row.total_stock + row.moved} available, "
                                             f"orders say {row.total_stock - row.kept}") for row in rows]


@check(BALANCE)
def confirmed_counters(view):
    """Sales whose confirmed_units counter (what derived stock reads) is not their CONFIRMED orders' units."""
    confirmed = (select(Order.product_id, func.sum(Order.quantity).label("units"))
                 .where(Order.status == CONFIRMED, view.of_products(Order.product_id))
                 .group_by(Order.product_id).subquery())
    units = func.coalesce(confirmed.c.units, 0)
    query = (select(Product.slug, Product.confirmed_units, units.label("units"))
             .outerjoin(confirmed, confirmed.c.product_id == Product.id)
             .where(view.products(), Product.confirmed_units != units))
    count, rows = view.offending(query)
    return count, [Breach(BALANCE, row.slug, f"confirmed_units says {row.confirmed_units}, orders say {row.units}")
                   for row in rows]
