"""Where each event of the outbox stands at each endpoint: owed, due, in flight, delivered or given up.

The outbox in the database is the truth; Redis only carries the work. Every SWEEP_SECONDS a worker fans
new events out (a delivery row per event and endpoint), takes what is due and sends it. Taking a delivery
moves its next_attempt_at a lease ahead (a conditional update, so two workers never take one delivery at
once), so a worker SIGKILLed mid-send, or a job lost with Redis, leaves it due again once the lease runs
out. Delivery is therefore at least once: the endpoint deduplicates by webhook-id.

Per endpoint, one hold's events go in the order they happened: fan-out chains each delivery to the one
before it with the same ordering key (the hold, or the sale) at that endpoint, and a delivery is due only
once that one is delivered.

A failed attempt (non-2xx, no answer within the timeout) is retried on RetrySchedule: the first within
`first_seconds` (10 s), then doubling with jitter up to one hour apart, until `give_up_seconds` (25 h)
after the delivery was first owed; then it is failed, and `flask webhooks retry` sends it again.
"""

import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.orm import aliased

from ..models import DELIVERED, DELIVERY_FAILED, DELIVERY_PENDING, WebhookDelivery, WebhookEvent
from .clock import db_now

D = WebhookDelivery


@dataclass(frozen=True)
class RetrySchedule:
    """When a failed delivery is tried again, how long one attempt may hold it, and when to give up."""

    first_seconds: float = 10
    cap_seconds: float = 3600
    give_up_seconds: float = 25 * 3600
    lease_seconds: float = 60

    @classmethod
    def from_config(cls, config):
        """Build the schedule from a Flask config mapping."""
        return cls(config["WEBHOOK_RETRY_FIRST_SECONDS"], config["WEBHOOK_RETRY_CAP_SECONDS"],
                   config["WEBHOOK_RETRY_HOURS"] * 3600, config["WEBHOOK_LEASE_SECONDS"])

    def delay(self, failures, rand=random.random):
        """Seconds before the next attempt after `failures` failed ones: exponential with jitter (half to
        all of first_seconds x 2^(failures-1), at most cap_seconds), so a recovering endpoint is not hit
        by every delivery at the same instant."""
        base = min(self.cap_seconds, self.first_seconds * 2 ** min(failures - 1, 32))
        return base * (0.5 + 0.5 * rand())


@dataclass(frozen=True)
class Attempt:
    """One delivery taken for sending: where, what, and which attempt this is (its claim)."""

    delivery_id: int
    endpoint: str
    webhook_id: str
    body: str
    attempt: int


def fan_out(session, endpoints, limit=1000):
    """Give every event not yet fanned out a pending delivery per endpoint; how many events. Events
    written while no endpoint is configured wait for one."""
    if not endpoints:
        return 0
    now = db_now(session)
    ids = session.execute(select(WebhookEvent.id).where(WebhookEvent.fanned_out.is_(False))
                          .order_by(WebhookEvent.id).limit(limit)).scalars().all()
    if not ids:
        session.rollback()
        return 0
    # The conditional update decides which of two racing sweeps fans each event out.
    won = session.execute(update(WebhookEvent).where(WebhookEvent.id.in_(ids), WebhookEvent.fanned_out.is_(False))
                          .values(fanned_out=True).returning(WebhookEvent.id, WebhookEvent.ordering_key)
                          .execution_options(synchronize_session=False)).all()
    rows = [{"event_id": event_id, "endpoint": endpoint, "ordering_key": key, "state": DELIVERY_PENDING,
             "attempts": 0, "failures": 0, "created_at": now, "next_attempt_at": now}
            for event_id, key in won for endpoint in endpoints]
    if rows:
        new_ids = session.execute(insert(D.__table__).returning(D.__table__.c.id), rows).scalars().all()
        # Chain each new delivery to the one before it of its ordering key at its endpoint (one probe of
        # ix_webhook_deliveries_endpoint_key each), so take_due checks order by primary key, never a scan.
        earlier = aliased(D)
        before = (select(func.max(earlier.id)).where(earlier.endpoint == D.endpoint,
                                                     earlier.ordering_key == D.ordering_key,
                                                     earlier.event_id < D.event_id)
                  .scalar_subquery())
        session.execute(update(D).where(D.id.in_(new_ids)).values(after_id=before)
                        .execution_options(synchronize_session=False))
    session.commit()
    return len(won)


def take_due(session, schedule=RetrySchedule(), limit=200, endpoints=None):
    """Take the deliveries that are due (each behind no earlier owed event of its hold at its endpoint),
    to `endpoints` only if given, for one attempt each: their lease starts now. [Attempt], by event."""
    now = db_now(session)
    before = aliased(D)
    # A scalar subquery under OR: evaluated per candidate as one primary-key probe, whatever the planner
    # knows of the table (as a join, a table fresh from a burst, not yet analysed, got a plan that scanned
    # every delivery for every candidate: 30 s per call with 5,000 owed).
    previous_delivered = or_(D.after_id.is_(None),
                             select(before.state).where(before.id == D.after_id).scalar_subquery() == DELIVERED)
    where = [D.state == DELIVERY_PENDING, D.next_attempt_at <= now, previous_delivered]
    if endpoints is not None:  # a removed endpoint keeps its rows (`flask webhooks status` shows them)
        where.append(D.endpoint.in_(endpoints))
    # In due order, as the partial index on next_attempt_at holds them, so the walk can stop at `limit`.
    # SKIP LOCKED: workers taking at once each get other deliveries, instead of all but one waiting for
    # the first one's row and then finding it taken (their threads would stop until the next sweep).
    # (SQLite: ignored; its writer lock serialises the takers.)
    due = session.execute(select(D.id).where(*where).order_by(D.next_attempt_at).limit(limit)
                          .with_for_update(skip_locked=True, of=D)).scalars().all()
    if not due:
        session.rollback()
        return []
    taken = session.execute(
        update(D).where(D.id.in_(due), D.state == DELIVERY_PENDING, D.next_attempt_at <= now)
        .values(attempts=D.attempts + 1, next_attempt_at=now + timedelta(seconds=schedule.lease_seconds),
                last_attempt_at=now)
        .returning(D.id).execution_options(synchronize_session=False)).scalars().all()
    rows = session.execute(
        select(D.id, D.endpoint, WebhookEvent.webhook_id, WebhookEvent.body, D.attempts)
        .join(WebhookEvent, WebhookEvent.id == D.event_id).where(D.id.in_(taken))
        .order_by(D.event_id, D.id)).all() if taken else []
    session.commit()  # the lease is on record before anything is sent
    return [Attempt(*row) for row in rows]


def record_delivered(session, attempt):
    """A 2xx answer: the delivery is done, whichever attempt got it there."""
    now = db_now(session)
    session.execute(update(D).where(D.id == attempt.delivery_id, D.state != DELIVERED)
                    .values(state=DELIVERED, delivered_at=now, last_error=None)
                    .execution_options(synchronize_session=False))
    session.commit()


def record_failed(session, attempt, error, schedule=RetrySchedule(), rand=random.random):
    """A failed attempt: due again after the schedule's delay, or failed once the retries ran out. An
    attempt whose lease another attempt took over since changes nothing."""
    now = db_now(session)
    row = session.execute(select(D.failures, D.created_at).where(
        D.id == attempt.delivery_id, D.state == DELIVERY_PENDING, D.attempts == attempt.attempt)).one_or_none()
    if row is None:
        session.rollback()
        return None
    failures = row.failures + 1
    gave_up = (now - row.created_at).total_seconds() >= schedule.give_up_seconds
    values = {"failures": failures, "last_error": str(error)[:500]}
    if gave_up:
        values["state"] = DELIVERY_FAILED
    else:
        values["next_attempt_at"] = now + timedelta(seconds=schedule.delay(failures, rand))
    session.execute(update(D).where(D.id == attempt.delivery_id, D.state == DELIVERY_PENDING,
                                    D.attempts == attempt.attempt)
                    .values(**values).execution_options(synchronize_session=False))
    session.commit()
    return values.get("next_attempt_at", DELIVERY_FAILED)


@dataclass(frozen=True)
class EndpointStatus:
    """What one endpoint is owed: pending (of which failing: its last attempt failed), failed (given
    up), delivered, and how long the oldest undelivered event has waited (seconds, or None)."""

    endpoint: str
    pending: int
    failing: int
    failed: int
    delivered: int
    oldest_undelivered_seconds: float | None


def status(session):
    """[EndpointStatus] for every endpoint that has deliveries, by endpoint."""
    now = db_now(session)
    owed = D.state != DELIVERED
    rows = session.execute(
        select(D.endpoint,
               func.count().filter(D.state == DELIVERY_PENDING),
               func.count().filter(and_(D.state == DELIVERY_PENDING, D.failures > 0)),
               func.count().filter(D.state == DELIVERY_FAILED),
               func.count().filter(D.state == DELIVERED),
               func.min(case((owed, WebhookEvent.created_at))))
        .join(WebhookEvent, WebhookEvent.id == D.event_id).group_by(D.endpoint).order_by(D.endpoint)).all()
    session.rollback()
    return [EndpointStatus(endpoint, pending, failing, failed, delivered,
                           _age(now, oldest)) for endpoint, pending, failing, failed, delivered, oldest in rows]


def backlog(session):
    """What the dashboard shows: deliveries pending, of which failing (their last attempt failed), failed
    (given up), and the age in seconds of the oldest one owed (None when nothing is owed)."""
    now = db_now(session)
    pending, failing, oldest = session.execute(
        select(func.count(), func.count().filter(D.failures > 0), func.min(D.created_at))
        .where(D.state == DELIVERY_PENDING)).one()
    failed = session.execute(select(func.count()).where(D.state == DELIVERY_FAILED)).scalar_one()
    return {"pending": int(pending), "failing": int(failing) + int(failed), "failed": int(failed),
            "oldest_seconds": None if oldest is None else round(_age(now, oldest), 1)}


def unfanned(session):
    """Events written that no endpoint has been given yet (none configured, or the sweep is behind)."""
    count = session.execute(select(func.count()).where(WebhookEvent.fanned_out.is_(False))).scalar_one()
    session.rollback()
    return count


def retry(session, endpoint=None):
    """Make every failed delivery, and every pending one whose last attempt failed, due now (a failed
    one starts a fresh schedule); how many."""
    now = db_now(session)
    where = [or_(D.state == DELIVERY_FAILED, and_(D.state == DELIVERY_PENDING, D.failures > 0))]
    if endpoint is not None:
        where.append(D.endpoint == endpoint)
    count = session.execute(
        update(D).where(*where)
        .values(state=DELIVERY_PENDING, next_attempt_at=now,
                created_at=case((D.state == DELIVERY_FAILED, now), else_=D.created_at),
                failures=case((D.state == DELIVERY_FAILED, 0), else_=D.failures))
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    return count


def _age(now, oldest):
    if oldest is None:
        return None
    if isinstance(oldest, str):  # SQLite hands an aggregate's time back as text
        from datetime import datetime, timezone

        oldest = datetime.fromisoformat(oldest)
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=timezone.utc)
    return max(0.0, (now - oldest).total_seconds())
