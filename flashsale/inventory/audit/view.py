"""One consistent read of the database for a whole audit, and the part of the shop it covers.

Every check of one audit reads the same snapshot, so they agree with each other about one instant
however busy the sale: a hold placed, paid or lapsed while the audit runs is simply not there yet.
PostgreSQL: a `REPEATABLE READ, READ ONLY, DEFERRABLE` transaction (DEFERRABLE only matters to
SERIALIZABLE; REPEATABLE READ already gives one snapshot, and it never waits for one). SQLite: a plain
deferred BEGIN (database.READ_SNAPSHOT), whose first read fixes the snapshot; in WAL mode it never
blocks the writers, unlike the BEGIN IMMEDIATE every other transaction there takes.

The audit's "now" is read after the snapshot was taken (clock_timestamp() inside the first statement),
so every transaction the snapshot contains judged the clock before it: a hold another buyer took over
once it lapsed is seen lapsed, never as two holds on one unit.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, literal, select, text, true

from ...database import READ_SNAPSHOT
from ...models import Order, Product, UTCDateTime
from ..clock import sqlite_now
from .findings import SAMPLE


class UnknownProduct(LookupError):
    """A product to audit that the database does not have."""

    def __init__(self, slugs):
        super().__init__(f"no product with slug {', '.join(sorted(slugs))}")
        self.slugs = slugs


@dataclass(frozen=True)
class Scope:
    """The part of the shop to audit: some products (by slug), and/or the holds placed in a window.

    since/until: datetimes, or timedeltas meaning that long before the audit's instant. A window narrows
    the holds examined one by one; a sale's totals (stock, ledger balance, per-customer units) are
    properties of the whole sale, so every sale with a hold in the window is checked whole.
    """

    products: tuple = ()
    since: datetime | timedelta | None = None
    until: datetime | timedelta | None = None


WHOLE_SHOP = Scope()


@dataclass
class AuditView:
    """What a check reads: one snapshot (`connection`), its instant (`now`), and the scope's filters."""

    connection: object
    engine: object
    now: datetime
    product_ids: list | None = None
    since: datetime | None = None
    until: datetime | None = None
    sample: int = SAMPLE
    gateway: object = None
    final_seconds: float | None = None
    slugs: tuple = field(default_factory=tuple)

    @property
    def at(self):
        """The audit's instant as a SQL value."""
        return literal(self.now, UTCDateTime())

    @property
    def scoped(self):
        """True unless the whole shop is audited."""
        return self.product_ids is not None or self.since is not None or self.until is not None

    def holds(self, order=Order):
        """The orders in scope."""
        conditions = []
        if self.product_ids is not None:
            conditions.append(order.product_id.in_(self.product_ids))
        if self.since is not None:
            conditions.append(order.created_at >= self.since)
        if self.until is not None:
            conditions.append(order.created_at < self.until)
        return and_(true(), *conditions)

    def of_products(self, product_id):
        """`product_id` (a column) is a sale in scope: every sale, those named, or (with a window) those
        with a hold placed in it; checked whole, ledger events included."""
        return true() if self.product_ids is None else product_id.in_(self.product_ids)

    def products(self):
        """The products in scope."""
        return self.of_products(Product.id)

    def offending(self, query):
        """(how many rows `query` returns, the first `sample` of them), in one statement.

        MATERIALIZED: planned on its own, `query` is planned to return all its rows (they are counted);
        as a subquery under the LIMIT, PostgreSQL would plan it to return the first few fast, e.g. by
        walking every order in primary key order for a sale of a few thousand. (PostgreSQL only: SQLite
        before 3.35 lacks the word, and its planner has no such bias.)
        """
        found = query.cte("found").prefix_with("MATERIALIZED", dialect="postgresql")
        rows = self.connection.execute(
            select(found, func.count().over().label("breaches_found"))
            .order_by(*found.c).limit(self.sample)).all()  # the same sample from run to run
        return (rows[0].breaches_found if rows else 0), rows

    @contextmanager
    def fresh_read(self):
        """A connection reading the database as it is now, after the snapshot (read-only on SQLite too)."""
        with read_connection(self.engine) as connection:
            yield connection

    def describe(self):
        """The scope in words, for the report."""
        sales = ", ".join(self.slugs) if self.slugs else "all sales"
        since, until = (bound and bound.isoformat(timespec="seconds") for bound in (self.since, self.until))
        if since and until:
            return f"{sales}, holds placed from {since} to {until}"
        if since or until:
            return f"{sales}, holds placed {'since ' + since if since else 'before ' + until}"
        return sales


@contextmanager
def read_connection(engine):
    """A connection whose transaction only reads; on SQLite it begins deferred (no writer lock)."""
    connection = engine.connect()
    if engine.dialect.name == "sqlite":
        connection = connection.execution_options(**{READ_SNAPSHOT: True})
    try:
        yield connection
    finally:
        connection.rollback()
        connection.close()


@contextmanager
def consistent_read(engine, scope=WHOLE_SHOP, sample=SAMPLE, gateway=None, final_seconds=None):
    """An AuditView on one snapshot of the database, for the length of the block."""
    with read_connection(engine) as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE")
            now = connection.execute(select(func.clock_timestamp())).scalar_one()
        else:
            connection.execute(text("SELECT count(*) FROM sqlite_master"))  # the first read fixes the snapshot
            now = sqlite_now()
        view = AuditView(connection, engine, now, sample=sample, gateway=gateway, final_seconds=final_seconds,
                         slugs=tuple(scope.products))
        if scope.products:
            found = dict(connection.execute(select(Product.slug, Product.id)
                                            .where(Product.slug.in_(scope.products))).all())
            if missing := set(scope.products) - set(found):
                raise UnknownProduct(missing)
            view.product_ids = sorted(found.values())
        view.since, view.until = (now - bound if isinstance(bound, timedelta) else bound
                                  for bound in (scope.since, scope.until))
        if view.since is not None or view.until is not None:
            # The sales with a hold placed in the window, once (ix_orders_created_at), for the sale-wide checks.
            view.product_ids = list(connection.execute(
                select(Order.product_id).where(view.holds()).distinct().order_by(Order.product_id)).scalars())
        yield view
