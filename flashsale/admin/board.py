"""What the dashboard shows: Redis metrics, stock and hold outcomes per product, payments, webhook
deliveries, the queue, recent holds, the last audit."""

import time
from datetime import datetime

from flask import current_app
from sqlalchemy import func, or_, select

from .. import metrics
from ..extensions import db, redis_store
from ..inventory import catalog, deliveries
from ..inventory import snapshot as stock_snapshot
from ..inventory.audit import last as last_audit
from ..inventory.clock import db_now, now_expression
from ..inventory.stock import lapsed_hold
from ..inventory.waiting_room import waiting_room_from_config
from ..models import CONFIRMED, CONFIRMING, EXPIRED, RELEASED, Order, Product
from ..serialise import iso, mask_email

RECENT_HOLDS = 10


def snapshot():
    """One JSON-ready picture for GET /admin/metrics and the dashboard page (emails masked)."""
    session = db.session
    redis = redis_store.client
    moment = time.time()  # one instant for every bucket read or written below: none straddles a boundary
    board = metrics.snapshot(redis, now=moment)
    outcomes = hold_outcomes(session)
    products = session.execute(select(Product).order_by(Product.id)).scalars().all()
    # The same stock snapshots the watchers poll (inventory/snapshot.py), not a sum over the orders.
    watched = stock_snapshot.read_many(session, redis, [p.id for p in products])
    products = [p for p in products if p.id in watched]
    levels = {pid: snap.level for pid, snap in watched.items()}
    board["products"] = [product_row(p, levels[p.id], outcomes.get(p.id)) for p in products]
    board["payments"] = payment_stats(session)
    board["webhooks"] = deliveries.backlog(session)
    board["waiting_rooms"] = waiting_room_rows(redis, [p for p in products if p.waiting_room])
    metrics.sample_gauges(redis, {p.id: levels[p.id].available for p in products},
                          board["hold_latency_ms"], board["lock_wait_ms"], board["payment_latency_ms"], now=moment)
    board["gauges"] = metrics.gauge_series(redis, now=moment)
    board["queue"] = queue_stats()
    board["recent_holds"] = recent_holds(session, {p.id: p.slug for p in products})
    now = db_now(session)
    board["server_time"] = iso(now)
    board["audit"] = audit_summary(redis, now)
    session.rollback()
    return board


def audit_summary(redis, now):
    """The last `flask audit`'s result and how long ago it read the database (None: never run)."""
    found = last_audit.read(redis)
    if found is not None:
        found["age_seconds"] = max(0, round((now - datetime.fromisoformat(found["at"])).total_seconds()))
    return found


def product_row(product, level, outcome):
    """A row of the per-product table: stock in units, and how its holds ended."""
    holds_made, confirmed_holds, expired_units, released_units = outcome or (0, 0, 0, 0)
    return {
        "id": product.id, "slug": product.slug, "name": product.name,
        "total": level.total, "available": level.available, "held": level.held,
        "paying": level.paying, "confirmed": level.confirmed, "expired": expired_units, "released": released_units,
        "holds": holds_made, "confirmed_holds": confirmed_holds,
        "conversion_rate": round(confirmed_holds / holds_made, 4) if holds_made else None,
    }


def waiting_room_rows(redis, products):
    """Per waiting-room product: line length, admissions and their rate, wait percentiles, abandonment."""
    room = waiting_room_from_config(redis, current_app.config)
    rows = []
    for product in products:
        stats = room.stats(catalog.SaleInfo(product.id, product.slug, product.total_stock,
                                            product.max_per_customer, product.sale_starts_at,
                                            product.sale_ends_at, True, product.admission_rate))
        waits = stats.pop("waits_s")
        rows.append({"slug": product.slug, "name": product.name, **stats,
                     "wait_s": metrics.percentiles(waits)})
    return rows


def payment_stats(session):
    """Holds being paid for right now (CONFIRMING) and how long the oldest has waited, by the database clock."""
    count, oldest = session.execute(
        select(func.count(), func.min(Order.confirmation_requested_at)).where(Order.status == CONFIRMING)
    ).one()
    waited = (db_now(session) - oldest).total_seconds() if oldest is not None else None
    return {"in_progress": int(count), "oldest_seconds": round(waited, 1) if waited is not None else None}


def hold_outcomes(session):
    """{product_id: (holds, confirmed holds, expired units, released units)}; lapsed holds count as expired."""
    now = now_expression(session)
    expired = or_(Order.status == EXPIRED, lapsed_hold(now))
    rows = session.execute(
        select(Order.product_id, func.count(),
               func.count().filter(Order.status == CONFIRMED),
               func.coalesce(func.sum(Order.quantity).filter(expired), 0),
               func.coalesce(func.sum(Order.quantity).filter(Order.status == RELEASED), 0))
        .group_by(Order.product_id)
    )
    return {pid: (int(n), int(c), int(e), int(r)) for pid, n, c, e, r in rows}


def recent_holds(session, slugs):
    """The latest holds, newest first, with the customer's email masked."""
    orders = session.execute(
        select(Order).order_by(Order.created_at.desc()).limit(RECENT_HOLDS)).scalars()
    return [{"product": slugs.get(o.product_id), "email": mask_email(o.customer_email),
             "quantity": o.quantity, "status": o.status, "created_at": iso(o.created_at)}
            for o in orders]


def queue_stats():
    """RQ queue depth, scheduled jobs, failed jobs and live workers."""
    from rq import Worker

    queue = redis_store.queue
    return {
        "depth": queue.count,
        "scheduled": queue.scheduled_job_registry.count,
        "failed": queue.failed_job_registry.count,
        "workers": Worker.count(queue=queue),
    }
