"""Derived stock: available = total_stock - taken, and the pictures of it (StockLevel, Snapshot).

Taken units belong to CONFIRMED holds, CONFIRMING holds (a confirmation was accepted; the payment
decides) and PENDING holds whose hold_expires_at is in the future by the database clock, so a hold
stops counting the instant it lapses whether or not any expiry job has run (invariant 2).

That rule is written once, here, as SQLAlchemy expressions: PostgreSQL's raw SQL of the hot path
(placement.READ_SALES) is rendered from them (`rule_sql`), SQLite's batch transaction builds its reads
from them, and the snapshot's rebuild, the dashboard and the audit use them too. The snapshot's Lua
(snapshot.READ_SCRIPT) applies the same rule to PENDING units bucketed by expiry second.

One stored number takes part: products.confirmed_units, the units of CONFIRMED holds. It is safe
because it is never decided on its own: only the transaction that records CONFIRMED moves it
(ledger.transition_hold), under the product's row lock and in the same commit as the order's status,
so it always equals the CONFIRMED orders' units (`flask audit` checks it). The hot path reads it
instead of summing a sale's whole confirmed history; the holds still in play are summed as above.
"""

import math
import time
import zlib
from dataclasses import dataclass

from sqlalchemy import and_, func, literal_column, or_, select
from sqlalchemy.dialects import postgresql

from ..models import CONFIRMED, CONFIRMING, PENDING, Order, Product
from .clock import now_expression


def live_hold(now):
    """PENDING holds that have not lapsed at `now`."""
    return and_(Order.status == PENDING, Order.hold_expires_at > now)


def lapsed_hold(now):
    """PENDING holds that have lapsed at `now`, recorded as EXPIRED or not yet."""
    return and_(Order.status == PENDING, Order.hold_expires_at <= now)


def holding_stock(now):
    """Holds not yet confirmed whose units are taken at `now`: CONFIRMING, or PENDING and not lapsed."""
    return or_(Order.status == CONFIRMING, live_hold(now))


def counts_against_stock(now):
    """The filter for orders whose units are not available: confirmed, paying, or held and live."""
    return or_(Order.status == CONFIRMED, holding_stock(now))


def is_lapsed(status, hold_expires_at, now):
    """The same rule in Python, for one hold: PENDING and past its expiry at `now`."""
    return status == PENDING and hold_expires_at <= now


def rule_sql(rule, now_sql):
    """A rule above as PostgreSQL text for raw SQL, with `now_sql` (e.g. "clock.now") as its clock."""
    expression = rule(literal_column(now_sql))
    text = expression.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    return f"({text})"  # parenthesised: it is ANDed with other conditions wherever it is used


def sale_state(starts, ends, available, now):
    """One of upcoming, live, sold_out, ended (datetimes or epoch seconds, as long as all alike)."""
    if now < starts:
        return "upcoming"
    if now >= ends:
        return "ended"
    return "sold_out" if available <= 0 else "live"


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
    held = func.coalesce(func.sum(Order.quantity).filter(live_hold(now)), 0)
    query = (
        select(Product.id, Product.total_stock, confirmed, held, paying)
        .outerjoin(Order, and_(Order.product_id == Product.id, counts_against_stock(now)))
        .group_by(Product.id, Product.total_stock)
    )
    if product_ids is not None:
        query = query.where(Product.id.in_(list(product_ids)))
    return {pid: StockLevel(total, int(c), int(h), int(p))
            for pid, total, c, h, p in session.execute(query)}


@dataclass(frozen=True)
class Snapshot:
    """One product's stock as a poll saw it (snapshot.py), by Redis's clock (`now`, epoch seconds)."""

    product_id: int
    product_json: str  # the product's fields that only seeding changes, as compact JSON
    total: int
    confirmed: int
    paying: int
    held: int
    starts: float
    ends: float
    built: float
    now: float
    watchers: int = 0  # distinct addresses that polled the product in the last minute or two

    @property
    def level(self):
        """The same picture as stock_levels gives (the dashboard's rows)."""
        return StockLevel(self.total, self.confirmed, self.held, self.paying)

    @property
    def available(self):
        return self.level.available

    @property
    def state(self):
        """upcoming | live | sold_out | ended at the poll's instant."""
        return sale_state(self.starts, self.ends, self.available, self.now)

    @property
    def age(self):
        return self.now - self.built

    @property
    def etag(self):
        """Changes exactly when what a watcher is shown changes (not with the clock or the pace)."""
        return f'"{self.product_id}-{crc(self.product_json)}-{self.total}-{self.available}-{self.state}"'


def crc(text):
    """A short checksum of some text, for ETags."""
    return format(zlib.crc32(text.encode()), "x")


SNAPSHOT_TTL_MS = 24 * 3600 * 1000  # a snapshot nobody polls or moves for a day goes away


def bucket(hold_expires_at):
    """A snapshot's held bucket for holds expiring at this instant: the next whole second (never early)."""
    return str(math.ceil(hold_expires_at.timestamp()))


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
