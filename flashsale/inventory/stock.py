"""Derived stock: available = total_stock - taken, never a stored counter.

Taken units belong to CONFIRMED holds, CONFIRMING holds (a confirmation was accepted; the payment
decides) and PENDING holds whose hold_expires_at is in the future by the database clock, so a hold
stops counting the instant it lapses whether or not any expiry job has run (invariant 2).

That rule is written once, here, as SQLAlchemy expressions: PostgreSQL's raw SQL of the hot path
(placement.READ_SALE) is rendered from them (`rule_sql`), SQLite's batch transaction
(placement.SQLiteBatchTransaction) builds its reads from them, and the audit uses them too.
"""

import time
from dataclasses import dataclass

from sqlalchemy import and_, func, literal_column, or_, select
from sqlalchemy.dialects import postgresql

from ..models import CONFIRMED, CONFIRMING, PENDING, Order, Product
from .clock import now_expression


def holding_stock(now):
    """Holds not yet confirmed whose units are taken at `now`: CONFIRMING, or PENDING and not lapsed."""
    return or_(
        Order.status == CONFIRMING,
        and_(Order.status == PENDING, Order.hold_expires_at > now),
    )


def counts_against_stock(now):
    """The filter for orders whose units are not available: confirmed, paying, or held and live."""
    return or_(Order.status == CONFIRMED, holding_stock(now))


def rule_sql(rule, now_sql):
    """A rule above as PostgreSQL text for raw SQL, with `now_sql` (e.g. "clock.now") as its clock."""
    expression = rule(literal_column(now_sql))
    text = expression.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    return f"({text})"  # parenthesised: it is ANDed with other conditions wherever it is used


@dataclass(frozen=True)
class StockLevel:
    """A product's stock picture: what is confirmed, being paid for, held, and still available."""

    total: int
    confirmed: int
    held: int
    paying: int = 0

    @property
    def available(self):
        return max(self.total - self.confirmed - self.paying - self.held, 0)


def stock_levels(session, product_ids=None):
    """StockLevel per product id, computed with the database clock in one query."""
    now = now_expression(session)
    confirmed = func.coalesce(func.sum(Order.quantity).filter(Order.status == CONFIRMED), 0)
    paying = func.coalesce(func.sum(Order.quantity).filter(Order.status == CONFIRMING), 0)
    held = func.coalesce(
        func.sum(Order.quantity).filter(Order.status == PENDING, Order.hold_expires_at > now), 0
    )
    query = (
        select(Product.id, Product.total_stock, confirmed, held, paying)
        .outerjoin(Order, and_(Order.product_id == Product.id, counts_against_stock(now)))
        .group_by(Product.id, Product.total_stock)
    )
    if product_ids is not None:
        query = query.where(Product.id.in_(list(product_ids)))
    return {pid: StockLevel(total, int(c), int(h), int(p))
            for pid, total, c, h, p in session.execute(query)}


def sale_state(product, available, now):
    """One of upcoming, live, sold_out, ended for `product` at `now`."""
    if now < product.sale_starts_at:
        return "upcoming"
    if now >= product.sale_ends_at:
        return "ended"
    return "sold_out" if available <= 0 else "live"


_recent = {}  # product id -> (read at, available): a waiting room's polls share one read


def recently_available(session, product_id, max_age=0.5):
    """Units available now, read at most every max_age seconds per process (the waiting room asks on
    every poll; a read half a second old can only admit a few shoppers too many, who hear sold_out)."""
    hit = _recent.get(product_id)
    if hit and time.monotonic() - hit[0] < max_age:
        return hit[1]
    available = stock_levels(session, [product_id])[product_id].available
    _recent[product_id] = (time.monotonic(), available)
    return available


def forget_recent():
    """Drop the recent availability reads (between tests)."""
    _recent.clear()
