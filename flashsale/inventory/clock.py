"""The database clock: expiry and sale windows are decided by it, not by each process's clock."""

from datetime import datetime, timezone

from sqlalchemy import func, literal, select

from ..models import UTCDateTime


def is_postgresql(session):
    """True when the session talks to PostgreSQL (row locks, clock_timestamp, SKIP LOCKED)."""
    return session.get_bind().dialect.name == "postgresql"


def now_expression(session):
    """A SQL expression for 'now' that is evaluated by the database when the statement runs.

    PostgreSQL's now() is frozen when the transaction began, which may be long before a confirm; we use
    statement_timestamp(), one instant per statement, so a conditional UPDATE compares and stamps with the
    same value (confirmed_at < hold_expires_at always holds). SQLite has no server: its clock is ours.
    """
    if is_postgresql(session):
        return func.statement_timestamp()
    return literal(datetime.now(timezone.utc), UTCDateTime())


def db_now(session):
    """The database's current time as an aware UTC datetime."""
    if is_postgresql(session):
        return session.execute(select(func.statement_timestamp())).scalar_one()
    return datetime.now(timezone.utc)
