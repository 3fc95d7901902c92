"""The hold's transaction on PostgreSQL in three round trips: every check and both inserts in one statement.

Under the product's Redis lock psycopg2 sends BEGIN, then one message `SELECT ... FOR UPDATE; WITH ...`
(the row lock, then one statement that reads the database clock, the sale window, derived stock and the
customer's units and, only if every check passes, inserts the order and its HOLD_CREATED event), then
COMMIT. PostgreSQL gives each statement of a multi-statement message its own snapshot in READ
COMMITTED, so the WITH statement, which starts after the row lock was granted, sees every hold
committed by the previous holder of the lock (reading stock in the FOR UPDATE statement itself would
use a snapshot from before the wait, and could oversell).

Derived stock stays derived: units taken = the product's confirmed units (a counter that only the
confirming transaction moves, under this same row lock, and that `flask audit` checks against the
orders) + the quantities of PENDING holds whose expiry is still in the future, read through a partial
index that only holds PENDING rows. Its cost follows live holds, not the sale's history.
"""

from dataclasses import dataclass
from datetime import datetime, timezone

LOCK_ROW = "SELECT 1 FROM products WHERE id = %(product_id)s FOR UPDATE"

# One statement, run after LOCK_ROW in the same transaction. `placed` inserts only when `decision.ok`;
# `logged` writes the ledger event of whatever `placed` inserted (data-modifying CTEs always run).
PLACE_HOLD = """
WITH clock AS (
    SELECT statement_timestamp() AS now
), product AS (
    SELECT total_stock, max_per_customer, sale_starts_at, sale_ends_at, confirmed_units
    FROM products WHERE id = %(product_id)s
), held AS (
    SELECT COALESCE(SUM(quantity), 0) AS units, MIN(hold_expires_at) AS earliest
    FROM orders, clock
    WHERE product_id = %(product_id)s AND status = 'PENDING' AND hold_expires_at > clock.now
), mine AS (
    SELECT COALESCE(SUM(quantity), 0) AS units
    FROM orders, clock
    WHERE product_id = %(product_id)s AND customer_email = %(email)s
      AND (status = 'CONFIRMED' OR (status = 'PENDING' AND hold_expires_at > clock.now))
), replay AS (
    SELECT id, request_digest FROM orders
    WHERE %(key)s::text IS NOT NULL AND idempotency_key = %(key)s
), decision AS (
    SELECT clock.now, product.*, held.units + product.confirmed_units AS taken, held.earliest,
           mine.units AS mine, replay.id AS replay_id, replay.request_digest AS replay_digest,
           replay.id IS NULL
           AND clock.now >= product.sale_starts_at AND clock.now < product.sale_ends_at
           AND mine.units + %(quantity)s <= product.max_per_customer
           AND product.total_stock - product.confirmed_units - held.units >= %(quantity)s AS ok
    FROM clock, product, held, mine LEFT JOIN replay ON true
), placed AS (
    INSERT INTO orders (id, product_id, customer_email, quantity, status, hold_expires_at,
                        created_at, idempotency_key, request_digest)
    SELECT %(id)s, %(product_id)s, %(email)s, %(quantity)s, 'PENDING',
           now + make_interval(secs => %(hold_seconds)s), now, %(key)s, %(digest)s
    FROM decision WHERE ok
    RETURNING id, created_at, hold_expires_at
), logged AS (
    INSERT INTO inventory_events (product_id, order_id, type, delta, metadata, created_at)
    SELECT %(product_id)s, id, 'HOLD_CREATED', -%(quantity)s, '{}', created_at FROM placed
)
SELECT decision.now, decision.total_stock, decision.max_per_customer, decision.sale_starts_at,
       decision.sale_ends_at, decision.taken, decision.earliest, decision.mine, decision.replay_id,
       decision.replay_digest, placed.hold_expires_at
FROM decision LEFT JOIN placed ON true
"""


@dataclass(frozen=True)
class Decision:
    """What the statement saw and did: None for hold_expires_at means nothing was inserted."""

    now: datetime
    total_stock: int
    max_per_customer: int
    sale_starts_at: datetime
    sale_ends_at: datetime
    taken: int
    earliest_hold_expiry: datetime | None
    by_customer: int
    replay_id: str | None
    replay_digest: str | None
    hold_expires_at: datetime | None

    @property
    def available(self):
        return self.total_stock - self.taken


def _utc(moment):
    return moment.astimezone(timezone.utc) if moment is not None else None


def lock_and_place(connection, params, pause=None):
    """Send the row lock and PLACE_HOLD (one message unless `pause` must run between them).

    `connection` is the session's SQLAlchemy Connection: psycopg2 has sent BEGIN, errors arrive wrapped
    (an outage is an OperationalError), and the caller commits or rolls back.
    """
    if pause is None:
        result = connection.exec_driver_sql(f"{LOCK_ROW}; {PLACE_HOLD}", params)
    else:
        connection.exec_driver_sql(LOCK_ROW, params)
        pause()
        result = connection.exec_driver_sql(PLACE_HOLD, params)
    row = result.first()
    if row is None:
        return None
    now, total, limit, starts, ends, taken, earliest, mine, replay_id, digest, expires = row
    return Decision(_utc(now), total, limit, _utc(starts), _utc(ends), int(taken), _utc(earliest),
                    int(mine), replay_id, digest, _utc(expires))
