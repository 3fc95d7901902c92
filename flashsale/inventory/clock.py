"""The database clock: expiry and sale windows are decided by it, not by each process's clock."""

import time
from datetime import datetime, timezone

from sqlalchemy import func, literal, select, text

from ..models import UTCDateTime


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
    return literal(sqlite_now(), UTCDateTime())


def db_now(session):
    """The database's current time as an aware UTC datetime."""
    if is_postgresql(session):
        return session.execute(select(func.statement_timestamp())).scalar_one()
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
