"""GET /metrics: Prometheus's text format, read from the Redis metrics the dashboard reads (one truth).

Every web process and worker records into the same Redis counters (flashsale/metrics.py), so a scrape of
any web process reports the whole fleet; there are no per-process counters to add up. The collector
reads them at scrape time (one pipelined read of the totals and latency rings, the RQ registries and
each waiting-room line) and names them the Prometheus way: `_total` counters, seconds, and labels
drawn only from fixed sets (outcomes, job states) or from the shop's own waiting-room products.
Guarded like the dashboard: with ADMIN_TOKEN set, the same token (X-Admin-Token, a bearer, or ?token=)
or a 404.
"""

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import select

from .. import metrics
from ..extensions import db, redis_store
from ..inventory import deliveries
from ..models import Product
from . import board
from .routes import require_admin_token

bp = Blueprint("prometheus", __name__)
bp.before_request(require_admin_token)

# Each Redis outcome (metrics.OUTCOMES) as (family, label value). tests/test_prometheus.py checks that
# every outcome is exposed. A payment that ends a confirmation counts in both families.
FAMILIES = {
    "flashsale_holds": "Hold requests and holds by outcome: created, refused (sold_out, rate_limited, busy: "
                       "no lock in time, rejected: bad input or closed sale, unavailable), ended (expired, "
                       "released).",
    "flashsale_confirmations": "Confirmations by outcome: accepted (202), then confirmed (paid) or refused.",
    "flashsale_payments": "Payments by outcome: captured, refused, refunded, voided, and reconciled (settled "
                          "by reconciliation after a timeout or a crash).",
}
OUTCOME_LABELS = {
    "created": [("flashsale_holds", "created")],
    "sold_out": [("flashsale_holds", "sold_out")],
    "rate_limited": [("flashsale_holds", "rate_limited")],
    "busy": [("flashsale_holds", "busy")],
    "rejected": [("flashsale_holds", "rejected")],
    "unavailable": [("flashsale_holds", "unavailable")],
    "expired": [("flashsale_holds", "expired")],
    "released": [("flashsale_holds", "released")],
    "accepted": [("flashsale_confirmations", "accepted")],
    "confirmed": [("flashsale_confirmations", "confirmed"), ("flashsale_payments", "captured")],
    "payment_refused": [("flashsale_confirmations", "refused"), ("flashsale_payments", "refused")],
    "refunded": [("flashsale_payments", "refunded")],
    "voided": [("flashsale_payments", "voided")],
    "reconciled": [("flashsale_payments", "reconciled")],
}
LATENCIES = {
    "hold_latency_ms": ("flashsale_hold_latency_seconds", "Time to answer a hold request, recent requests."),
    "lock_wait_ms": ("flashsale_lock_wait_seconds", "Time a placed hold waited for its product's lock, recent holds."),
    "payment_latency_ms": ("flashsale_payment_latency_seconds",
                           "From a confirmation's 202 to CONFIRMED, by the database clock, recent payments."),
}
QUANTILES = {"p50": "0.5", "p95": "0.95", "p99": "0.99"}


class RedisMetrics:
    """A prometheus_client collector over the shared Redis metrics, the RQ queue and the lines."""

    def collect(self):
        """The metric families as of now (called by prometheus_client at each scrape)."""
        snap = metrics.snapshot(redis_store.client, buckets=1)
        yield from outcome_families(snap["totals"])
        yield from latency_families(snap)
        yield from queue_families(board.queue_stats())
        yield from waiting_room_families()
        yield from webhook_families(deliveries.status(db.session))


def outcome_families(totals):
    """The _total counters, every label of each family present (0 until it happens)."""
    families = {name: CounterMetricFamily(name, help_text, labels=["outcome"]) for name, help_text in FAMILIES.items()}
    for outcome, placements in OUTCOME_LABELS.items():
        for family, label in placements:
            families[family].add_metric([label], totals.get(outcome, 0))
    return families.values()


def latency_families(snap):
    """Recent latency quantiles (the dashboard's p50/p95/p99 over each ring of samples), in seconds."""
    for key, (name, help_text) in LATENCIES.items():
        family = GaugeMetricFamily(name, help_text + " Quantiles over the last samples kept.", labels=["quantile"])
        for point, quantile in QUANTILES.items():
            value = snap[key].get(point)
            if value is not None:
                family.add_metric([quantile], value / 1000)
        yield family


def queue_families(queue):
    """RQ: jobs waiting by state, and live workers."""
    jobs = GaugeMetricFamily("flashsale_queue_jobs", "RQ jobs by state: queued (the queue's depth), scheduled "
                             "(expiries waiting for their second), failed.", labels=["state"])
    for state, key in (("queued", "depth"), ("scheduled", "scheduled"), ("failed", "failed")):
        jobs.add_metric([state], queue[key])
    yield jobs
    yield GaugeMetricFamily("flashsale_workers", "Live `flask worker` processes.", value=queue["workers"])


def waiting_room_families():
    """Per waiting-room product (labelled by slug): shoppers in line, admitted so far, outstanding."""
    products = db.session.execute(select(Product).where(Product.waiting_room).order_by(Product.id)).scalars().all()
    rows = board.waiting_room_rows(redis_store.client, products)
    db.session.rollback()
    line = GaugeMetricFamily("flashsale_waiting_room_shoppers", "Shoppers waiting in a product's line.",
                             labels=["product"])
    admitted = CounterMetricFamily("flashsale_waiting_room_admissions", "Shoppers a product's line has admitted.",
                                   labels=["product"])
    unused = GaugeMetricFamily("flashsale_waiting_room_admissions_outstanding",
                               "Admissions given and not yet used or expired.", labels=["product"])
    for row in rows:
        line.add_metric([row["slug"]], row["line_length"])
        admitted.add_metric([row["slug"]], row["admitted"])
        unused.add_metric([row["slug"]], row["admissions_outstanding"])
    return line, admitted, unused


def webhook_families(endpoints):
    """Webhook deliveries by state, from the outbox (PostgreSQL is their truth), summed over endpoints:
    an endpoint's URL may carry a token, so it is no label."""
    by_state = GaugeMetricFamily("flashsale_webhook_deliveries", "Webhook deliveries by state: pending (owed, "
                                 "of which failing: their last attempt failed), failed (given up), delivered.",
                                 labels=["state"])
    for state in ("pending", "failing", "failed", "delivered"):
        by_state.add_metric([state], sum(getattr(row, state) for row in endpoints))
    yield by_state
    ages = [row.oldest_undelivered_seconds for row in endpoints if row.oldest_undelivered_seconds is not None]
    yield GaugeMetricFamily("flashsale_webhook_oldest_undelivered_seconds", "Age of the oldest event an "
                            "endpoint is still owed (0 when none is).", value=max(ages, default=0))


@bp.get("/metrics")
def scrape():
    """The Prometheus text exposition of the shared metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisMetrics())
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
