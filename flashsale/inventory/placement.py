"""The hold transaction for batches of buyers, on each backend (`batch_transaction` picks the class).

PostgreSQL (`BatchTransaction`): two messages however many buyers, and however many products' batches
(combining.py), the transaction serves.

Under each product's Redis lock the first message is `BEGIN; SELECT ... ORDER BY id FOR UPDATE; WITH ...`
(the products' row locks, in id order as every transaction here takes them, then one statement reading
the database clock and, per product, the sale, derived stock and the batch's customers' units, and any
Idempotency-Keys already used); the second inserts every accepted order with its HOLD_CREATED event in
one statement, and COMMITs. PostgreSQL gives each statement of a multi-statement message its own
snapshot in READ COMMITTED, so the WITH statement, which starts after the row locks were granted, sees
every hold committed by the previous holder of each lock (reading stock in the FOR UPDATE statement
itself would use a snapshot from before the wait, and could oversell).

Derived stock stays derived: units taken = the product's confirmed units (a counter that only the
confirming transaction moves, under this same row lock, and that `flask audit` checks against the
orders) + the quantities of holds still in play (CONFIRMING, or PENDING with an expiry in the future),
read through a partial index that only holds PENDING and CONFIRMING rows. Its cost follows the holds
in play, not the sale's history. Which holds count is stock.py's rule, rendered into this SQL.

SQLite (`SQLiteBatchTransaction`, the quick start): the same interface and the same reads, as SQLAlchemy
Core statements built from the same stock.py rule. `BEGIN IMMEDIATE` takes SQLite's single writer lock,
which does what the row locks do on PostgreSQL (for every product at once); SQLite runs in-process, so
there are no round trips to save.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import func, insert, select
from sqlalchemy.exc import DBAPIError

from ..models import HOLD_CREATED, PENDING, Order, Product
from . import stock
from .clock import sqlite_now
from .ledger import EVENTS, event_row

# In id order, the order every transaction that locks several products' rows takes them (ledger.py).
SHARED_LOCK_WAIT = "SET LOCAL lock_timeout = '50ms'"
LOCK_ROWS = "SELECT 1 FROM products WHERE id = ANY(%(product_ids)s) ORDER BY id FOR UPDATE"

READ_SALES = """
WITH clock AS (
    -- clock_timestamp(), not statement_timestamp(): this statement shares a message with the row locks,
    -- and statement_timestamp() would be when the message arrived, before the wait for the locks. The
    -- instant *after* the locks were granted is what a buyer's deadline is compared with (batches.py).
    SELECT clock_timestamp() AS now
), held AS (
    SELECT product_id, SUM(quantity) AS units,
           MIN(hold_expires_at) FILTER (WHERE status = 'PENDING') AS earliest
    FROM orders, clock
    WHERE product_id = ANY(%(product_ids)s) AND {holding}
    GROUP BY product_id
), mine AS (
    SELECT product_id, json_object_agg(customer_email, units) AS units FROM (
        SELECT product_id, customer_email, SUM(quantity) AS units FROM orders, clock
        WHERE product_id = ANY(%(product_ids)s) AND customer_email = ANY(%(emails)s::text[])
          AND {counts}
        GROUP BY product_id, customer_email) AS by_customer
    GROUP BY product_id
)
SELECT clock.now, p.id, p.total_stock, p.max_per_customer, p.sale_starts_at, p.sale_ends_at,
       p.confirmed_units + COALESCE(held.units, 0), held.earliest, COALESCE(mine.units, '{}'),
       (SELECT COALESCE(json_object_agg(idempotency_key, json_build_array(id, request_digest)), '{}')
        FROM orders WHERE idempotency_key = ANY(%(keys)s::text[]))
FROM clock, products AS p
LEFT JOIN held ON held.product_id = p.id
LEFT JOIN mine ON mine.product_id = p.id
WHERE p.id = ANY(%(product_ids)s)
""".replace("{holding}", stock.rule_sql(stock.holding_stock, "clock.now")) \
   .replace("{counts}", stock.rule_sql(stock.counts_against_stock, "clock.now"))

INSERT_HOLDS = """
WITH placed AS (
    INSERT INTO orders (id, product_id, customer_email, quantity, status, hold_expires_at,
                        created_at, idempotency_key, request_digest)
    SELECT h.id, h.product_id, h.email, h.quantity, 'PENDING', h.expires, %(now)s, h.key, h.digest
    FROM unnest(%(ids)s::text[], %(product_ids)s::int[], %(emails)s::text[], %(quantities)s::int[],
                %(keys)s::text[], %(digests)s::text[], %(expires)s::timestamptz[])
         AS h(id, product_id, email, quantity, key, digest, expires)
    RETURNING id, product_id, quantity
)
INSERT INTO inventory_events (product_id, order_id, type, delta, metadata, created_at)
SELECT product_id, id, 'HOLD_CREATED', -quantity, '{}', %(now)s FROM placed
"""


@dataclass(frozen=True)
class SaleNow:
    """The product as the database saw it under the row lock, for one batch of buyers."""

    now: datetime
    total_stock: int
    max_per_customer: int
    sale_starts_at: datetime
    sale_ends_at: datetime
    taken: int
    earliest_hold_expiry: datetime | None
    by_customer: dict = field(default_factory=dict)
    used_keys: dict = field(default_factory=dict)  # Idempotency-Key -> [order id, request digest]


def _utc(moment):
    return moment.astimezone(timezone.utc) if moment is not None else None


def lock_not_available(error):
    """True when a SQLAlchemy error is PostgreSQL's lock_timeout running out (SHARED_LOCK_WAIT)."""
    return getattr(error.orig, "pgcode", None) == "55P03"


def batch_transaction(engine):
    """The batch transaction for this engine's backend: PostgreSQL's, or SQLite's (the quick start)."""
    if engine.dialect.name == "postgresql":
        return BatchTransaction(engine)
    return SQLiteBatchTransaction(engine)


class BatchTransaction:
    """One batch's transaction on a pooled psycopg2 connection, in as few messages as PostgreSQL allows.

    The connection runs in autocommit mode so that BEGIN travels with the row lock and the read, and
    COMMIT with the inserts: three round trips in all (the pool's pre-ping, then two). psycopg2's errors
    are re-raised as SQLAlchemy's (an outage is an OperationalError, a key collision an IntegrityError)
    and a dropped connection is invalidated, exactly as through the session.
    """

    def __init__(self, engine):
        self.engine = engine
        self.open = False

    def __enter__(self):
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        try:
            self.pooled = self.engine.raw_connection()  # checkout (and pre-ping) from the app's pool
        except dbapi_error as refused:
            # A new connection refused (PostgreSQL down, or out of connection slots) reaches us raw
            # from the pool: as SQLAlchemy's, it is an outage (503), not a bug (500).
            raise DBAPIError.instance(None, None, refused, dbapi_error, connection_invalidated=True,
                                      dialect=self.engine.dialect) from refused
        self.dbapi = self.pooled.dbapi_connection
        self.dbapi.autocommit = True
        self.cursor = self.dbapi.cursor()
        return self

    def __exit__(self, exc_type, exc, tb):
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        wrapped = self._wrapped(exc) if isinstance(exc, dbapi_error) else None
        try:
            if self.open:
                self.cursor.execute("ROLLBACK")
                self.open = False
        except dbapi_error:
            self.pooled.invalidate()  # never hand back a connection that may still hold the row lock
        finally:
            if self.pooled.is_valid and not (wrapped and wrapped.connection_invalidated):
                self.cursor.close()
                self.dbapi.autocommit = False
            elif self.pooled.is_valid:
                self.pooled.invalidate()
            self.pooled.close()
        if wrapped is not None:
            raise wrapped from exc
        return False

    def _wrapped(self, error):
        dialect = self.engine.dialect
        gone = dialect.is_disconnect(error, self.dbapi, self.cursor)
        return DBAPIError.instance(None, None, error, dialect.loaded_dbapi.Error,
                                   connection_invalidated=gone, dialect=dialect)

    def lock_and_read(self, product_ids, emails, keys, pause=None, impatient=False):
        """BEGIN, lock the products' rows and read their sales for these buyers: {product id: SaleNow}
        (a product that does not exist is missing).

        impatient: wait for a row locked by another transaction only SHARED_LOCK_WAIT, then fail with
        LockNotAvailable (lock_not_available), so that several products' batches (combining.py) do
        not all wait on one product's row (batches._serve_apart)."""
        params = {"product_ids": sorted(product_ids), "emails": list(emails), "keys": list(keys)}
        begin = f"BEGIN; {SHARED_LOCK_WAIT}" if impatient else "BEGIN"
        self.open = True
        if pause is None:
            self.cursor.execute(f"{begin}; {LOCK_ROWS}; {READ_SALES}", params)
        else:
            self.cursor.execute(f"{begin}; {LOCK_ROWS}", params)
            pause()
            self.cursor.execute(READ_SALES, params)
        return {product_id: SaleNow(_utc(now), total, limit, _utc(starts), _utc(ends), int(taken),
                                    _utc(earliest), {email: int(units) for email, units in mine.items()},
                                    used)
                for now, product_id, total, limit, starts, ends, taken, earliest, mine, used
                in self.cursor.fetchall()}

    def insert_and_commit(self, holds, now):
        """Insert holds (id, product id, email, quantity, key, digest, expiry) and their events, and
        COMMIT, in one message."""
        if not holds:
            self.commit()
            return
        columns = list(zip(*holds, strict=True))
        self.cursor.execute(f"{INSERT_HOLDS}; COMMIT", {
            "now": now, "ids": list(columns[0]), "product_ids": list(columns[1]),
            "emails": list(columns[2]), "quantities": list(columns[3]), "keys": list(columns[4]),
            "digests": list(columns[5]), "expires": list(columns[6]),
        })
        self.open = False

    def commit(self):
        self.cursor.execute("COMMIT")
        self.open = False


ORDERS = Order.__table__


class SQLiteBatchTransaction:
    """One batch's transaction on SQLite, with BatchTransaction's interface.

    It runs on a SQLAlchemy Connection from the app's pool, whose BEGIN is `BEGIN IMMEDIATE`
    (database.py's begin listener; pysqlite's own transaction handling is off), so beginning takes the
    writer lock, waiting for it up to the busy timeout. Errors come out as SQLAlchemy's (a busy
    database is an OperationalError, answered 503), and a connection whose rollback fails is
    invalidated rather than handed back still holding the lock.
    """

    def __init__(self, engine):
        self.engine = engine

    def __enter__(self):
        self.connection = self.engine.connect()
        return self

    def __exit__(self, exc_type, exc, tb):
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        try:
            if self.connection.in_transaction():
                self.connection.rollback()
        except (DBAPIError, dbapi_error):
            self.connection.invalidate()  # never hand back a connection that may still hold the lock
        finally:
            self.connection.close()
        if isinstance(exc, dbapi_error):  # raised by a pause hook straight from the driver
            raise DBAPIError.instance(None, None, exc, dbapi_error, dialect=self.engine.dialect) from exc
        return False

    def lock_and_read(self, product_ids, emails, keys, pause=None, impatient=False):
        """BEGIN IMMEDIATE (the writer lock), then read the products' sales for these buyers:
        {product id: SaleNow} (a product that does not exist is missing). SQLite has no row locks:
        impatient changes nothing."""
        self.connection.begin()
        if pause is not None:
            pause()
        # The clock is read after the lock was granted: a buyer's deadline is compared with this (batches.py).
        now = sqlite_now()
        used = self.connection.execute(
            select(Order.idempotency_key, Order.id, Order.request_digest)
            .where(Order.idempotency_key.in_(list(keys)))
        ).all() if keys else []
        used = {key: [hold_id, digest] for key, hold_id, digest in used}
        return {product_id: sale for product_id in sorted(product_ids)
                if (sale := self._read_sale(product_id, emails, now, used)) is not None}

    def _read_sale(self, product_id, emails, now, used):
        product = self.connection.execute(
            select(Product.total_stock, Product.max_per_customer, Product.sale_starts_at,
                   Product.sale_ends_at, Product.confirmed_units).where(Product.id == product_id)
        ).first()
        if product is None:
            return None
        total, limit, starts, ends, confirmed = product
        held, earliest = self.connection.execute(
            select(func.coalesce(func.sum(Order.quantity), 0),
                   func.min(Order.hold_expires_at).filter(Order.status == PENDING))
            .where(Order.product_id == product_id, stock.holding_stock(now))
        ).one()
        mine = self.connection.execute(
            select(Order.customer_email, func.sum(Order.quantity))
            .where(Order.product_id == product_id, Order.customer_email.in_(list(emails)),
                   stock.counts_against_stock(now))
            .group_by(Order.customer_email)
        ).all()
        return SaleNow(now, total, limit, starts, ends, confirmed + int(held),
                       _as_utc(earliest), {email: int(units) for email, units in mine}, used)

    def insert_and_commit(self, holds, now):
        """Insert holds (id, product id, email, quantity, key, digest, expiry) and their events, and COMMIT."""
        if holds:
            self.connection.execute(insert(ORDERS), [
                {"id": hold_id, "product_id": product_id, "customer_email": email, "quantity": quantity,
                 "status": PENDING, "hold_expires_at": expires, "created_at": now,
                 "idempotency_key": key, "request_digest": digest}
                for hold_id, product_id, email, quantity, key, digest, expires in holds])
            self.connection.execute(insert(EVENTS), [
                event_row(HOLD_CREATED, hold_id, product_id, quantity, now)
                for hold_id, product_id, _, quantity, _, _, _ in holds])
        self.commit()

    def commit(self):
        self.connection.commit()


def _as_utc(value):
    """An aware UTC datetime from what SQLite hands back for MIN() of a column it stores as naive UTC text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
