"""The hold transaction on PostgreSQL for a batch of buyers: two messages however many it serves.

Under the product's Redis lock the first message is `BEGIN; SELECT ... FOR UPDATE; WITH ...` (the row
lock, then one statement reading the database clock, the sale, derived stock, the batch's customers'
units and any Idempotency-Keys already used); the second inserts every accepted order with its
HOLD_CREATED event in one statement, and COMMITs. PostgreSQL gives each statement of a multi-statement
message its own snapshot in READ COMMITTED, so the WITH statement, which starts after the row lock was
granted, sees every hold committed by the previous holder of the lock (reading stock in the FOR UPDATE
statement itself would use a snapshot from before the wait, and could oversell).

Derived stock stays derived: units taken = the product's confirmed units (a counter that only the
confirming transaction moves, under this same row lock, and that `flask audit` checks against the
orders) + the quantities of holds still in play (CONFIRMING, or PENDING with an expiry in the future),
read through a partial index that only holds PENDING and CONFIRMING rows. Its cost follows the holds
in play, not the sale's history. Which holds count is stock.py's rule, rendered into this SQL.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy.exc import DBAPIError

from . import stock

LOCK_ROW = "SELECT 1 FROM products WHERE id = %(product_id)s FOR UPDATE"

READ_SALE = """
WITH clock AS (
    -- clock_timestamp(), not statement_timestamp(): this statement shares a message with the row lock,
    -- and statement_timestamp() would be when the message arrived, before the wait for the lock. The
    -- instant *after* the lock was granted is what a buyer's deadline is compared with (line.py).
    SELECT clock_timestamp() AS now
), product AS (
    SELECT total_stock, max_per_customer, sale_starts_at, sale_ends_at, confirmed_units
    FROM products WHERE id = %(product_id)s
), held AS (
    SELECT COALESCE(SUM(quantity), 0) AS units,
           MIN(hold_expires_at) FILTER (WHERE status = 'PENDING') AS earliest
    FROM orders, clock
    WHERE product_id = %(product_id)s AND {holding}
)
SELECT clock.now, product.total_stock, product.max_per_customer, product.sale_starts_at,
       product.sale_ends_at, product.confirmed_units + held.units, held.earliest,
       (SELECT COALESCE(json_object_agg(customer_email, units), '{}') FROM (
            SELECT customer_email, SUM(quantity) AS units FROM orders
            WHERE product_id = %(product_id)s AND customer_email = ANY(%(emails)s::text[])
              AND {counts}
            GROUP BY customer_email) AS mine),
       (SELECT COALESCE(json_object_agg(idempotency_key, json_build_array(id, request_digest)), '{}')
        FROM orders WHERE idempotency_key = ANY(%(keys)s::text[]))
FROM clock, product, held
""".replace("{holding}", stock.rule_sql(stock.holding_stock, "clock.now")) \
   .replace("{counts}", stock.rule_sql(stock.counts_against_stock, "clock.now"))

INSERT_HOLDS = """
WITH placed AS (
    INSERT INTO orders (id, product_id, customer_email, quantity, status, hold_expires_at,
                        created_at, idempotency_key, request_digest)
    SELECT h.id, %(product_id)s, h.email, h.quantity, 'PENDING', %(expires)s, %(now)s, h.key, h.digest
    FROM unnest(%(ids)s::text[], %(emails)s::text[], %(quantities)s::int[], %(keys)s::text[],
                %(digests)s::text[]) AS h(id, email, quantity, key, digest)
    RETURNING id, quantity
)
INSERT INTO inventory_events (product_id, order_id, type, delta, metadata, created_at)
SELECT %(product_id)s, id, 'HOLD_CREATED', -quantity, '{}', %(now)s FROM placed
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
        self.pooled = self.engine.raw_connection()  # checkout (and pre-ping) from the app's pool
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

    def lock_and_read(self, product_id, emails, keys, pause=None):
        """BEGIN, lock the product's row and read the sale for these buyers; None: no such product."""
        params = {"product_id": product_id, "emails": list(emails), "keys": list(keys)}
        self.open = True
        if pause is None:
            self.cursor.execute(f"BEGIN; {LOCK_ROW}; {READ_SALE}", params)
        else:
            self.cursor.execute(f"BEGIN; {LOCK_ROW}", params)
            pause()
            self.cursor.execute(READ_SALE, params)
        row = self.cursor.fetchone()
        if row is None:
            return None
        now, total, limit, starts, ends, taken, earliest, mine, used = row
        return SaleNow(_utc(now), total, limit, _utc(starts), _utc(ends), int(taken),
                       _utc(earliest), {email: int(units) for email, units in mine.items()}, used)

    def insert_and_commit(self, product_id, holds, now, expires):
        """Insert (id, email, quantity, key, digest) holds and their events, and COMMIT, in one message."""
        if not holds:
            self.commit()
            return
        columns = list(zip(*holds, strict=True))
        self.cursor.execute(f"{INSERT_HOLDS}; COMMIT", {
            "product_id": product_id, "now": now, "expires": expires,
            "ids": list(columns[0]), "emails": list(columns[1]), "quantities": list(columns[2]),
            "keys": list(columns[3]), "digests": list(columns[4]),
        })
        self.open = False

    def commit(self):
        self.cursor.execute("COMMIT")
        self.open = False
