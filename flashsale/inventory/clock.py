"""The database clock: expiry, sale windows and line deadlines are decided by it, not by each host's clock.

Several web hosts compare each other's deadlines (a buyer's line deadline is judged by whichever host
serves the batch), so a host never uses its own clock for one: shared_time() is the database clock,
estimated on this host from an offset measured every few seconds.
"""

import time
from datetime import datetime, timezone

from sqlalchemy import func, literal, select, text

from ..models import UTCDateTime

# Test seam: seconds this host's clock is off by (FAULT_CLOCK_SKEW_SECONDS, honoured only when testing).
skew_seconds = 0.0
OFFSET_REFRESH_SECONDS = 5.0
# (database clock minus this host's clock in seconds, time.monotonic() when measured, the estimate's
# error bound in seconds: half the measuring SELECT's round trip)
_offset = None


def host_time():
    """This host's clock in epoch seconds (skewed by the test seam): for nothing another host compares."""
    return time.time() + skew_seconds


def shared_time(session):
    """The database clock now, in epoch seconds, without a round trip per call.

    Every OFFSET_REFRESH_SECONDS one SELECT measures how far this host's clock is from the database's (the
    estimate is off by at most half that SELECT's round trip). On SQLite, the one host's clock is the
    database's. Leaves the session's transaction open, as any read does.
    """
    return shared_clock(session)[0]


def shared_clock(session):
    """(shared_time(), how far it may be off in seconds): 0 on SQLite, else half the last measurement's
    round trip. A check made on the estimate refuses only beyond it, and leaves the rest to the database
    clock. One call asks the session for its database once (a tenth of the hot path's clock reading)."""
    global _offset
    if not is_postgresql(session):
        return host_time(), 0.0
    measured = _offset
    if measured is None or time.monotonic() - measured[1] > OFFSET_REFRESH_SECONDS:
        before = host_time()
        database = db_now(session).timestamp()
        after = host_time()
        measured = _offset = (database - (before + after) / 2, time.monotonic(), (after - before) / 2)
    return host_time() + measured[0], measured[2] + 0.001  # the database reports its clock to the µs


def estimated_shared_time():
    """shared_time() with the offset last measured (none yet: this host's clock), for code without a
    session (the sold-out gate's cheap window check, which hands any doubt to Flask)."""
    measured = _offset
    return host_time() + (measured[0] if measured else 0.0)


def is_postgresql(session):
    """True when the session talks to PostgreSQL (row locks, clock_timestamp, SKIP LOCKED)."""
    return session.get_bind().dialect.name == "postgresql"


def sqlite_now():
    """The database clock on SQLite: SQLite has no server, so its clock is this machine's."""
    return datetime.now(timezone.utc)


def now_expression(session):
    """A SQL expression for 'now' that is evaluated by the database when the statement runs.

    PostgreSQL's now() is frozen when the transaction began, which may be long before a confirm; we use
    statement_timestamp(), one instant per statement, so a conditional UPDATE compares and stamps with the
    same value (confirmed_at < hold_expires_at always holds). SQLite has no server: its clock is ours.
    """
    if is_postgresql(session):
        return func.statement_timestamp()
    return literal(_sqlite_now_in_transaction(session), UTCDateTime())


def db_now(session):
    """The database's current time as an aware UTC datetime."""
    if is_postgresql(session):
        return session.execute(select(func.statement_timestamp())).scalar_one()
    return _sqlite_now_in_transaction(session)


def _sqlite_now_in_transaction(session):
    """SQLite's 'now', read once the session's transaction has begun.

    Beginning is BEGIN IMMEDIATE (database.py): it waits for the writer lock, and what the transaction
    reads is fixed from then on. A clock read before that could be older than commits the transaction
    then sees: a hold that lapsed in between would still count, beside the units a newcomer took from
    it (stock reads and the audit would see an oversell that never was).
    """
    session.connection()
    return sqlite_now()


def wait_until_past(session, epoch):
    """Block until the database clock is past `epoch` (seconds since 1970).

    On PostgreSQL the server sleeps, in a transaction of the session that is left open; on SQLite this
    process sleeps with no transaction open (one would hold SQLite's writer lock all the while).
    """
    if is_postgresql(session):
        session.execute(text("SELECT pg_sleep(GREATEST(0, :deadline - EXTRACT(EPOCH FROM clock_timestamp())))"),
                        {"deadline": epoch})
        return
    while (remaining := epoch - sqlite_now().timestamp()) > 0:
        time.sleep(remaining)
