"""Delivering the outbox to the shop: signed POSTs (Standard Webhooks), run on the worker's threads.

Every SWEEP_SECONDS the ticker enqueues deliver_webhooks: it fans new events out to the endpoints of
WEBHOOK_URLS and wakes the worker's delivery threads, which take what is due one delivery at a time
(inventory/deliveries.py) until nothing is, so a slow or silent endpoint (up to WEBHOOK_TIMEOUT_SECONDS
per attempt) never holds up payments or expiry. Each attempt is signed afresh by the `standardwebhooks`
library with WEBHOOK_SECRET: the same webhook-id and body every time, the attempt's own
webhook-timestamp (receivers refuse stale ones).
"""

import logging
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from flask import current_app
from standardwebhooks import Webhook

from ..extensions import db
from ..inventory import deliveries

log = logging.getLogger(__name__)
_delivery_pool = None
USER_AGENT = "flashsale-webhooks/1"


def signed_headers(secret, webhook_id, body, at=None):
    """The Standard Webhooks headers for one attempt at sending `body`."""
    at = at or datetime.now(timezone.utc)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is not a delivery: urllib would follow it with a GET (losing the body) and count its 200."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(endpoint, webhook_id, body, secret, timeout):
    """POST one event; None when the endpoint answered 2xx, else what went wrong (for the record)."""
    headers = {"content-type": "application/json", "user-agent": USER_AGENT,
               **signed_headers(secret, webhook_id, body)}
    request = urllib.request.Request(endpoint, data=body.encode(), headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            answer.read(1024)
            if 200 <= answer.status < 300:
                return None
            return f"HTTP {answer.status}"
    except urllib.error.HTTPError as refused:
        return f"HTTP {refused.code}"
    except (urllib.error.URLError, OSError, ValueError) as unreachable:
        reason = getattr(unreachable, "reason", unreachable)
        return f"no answer: {reason.__class__.__name__}: {reason}"[:500]


def deliver_webhooks():
    """Job: fan new events out to the endpoints, then send what is due: on the delivery pool's threads
    when the worker has one (this returns at once), else here until nothing is due. Returns how many
    attempts it made here (0 when the pool does the work)."""
    from .jobs import _app_context

    with _app_context():
        endpoints = current_app.config["WEBHOOK_ENDPOINTS"]
        if not endpoints:
            return 0
        while deliveries.fan_out(db.session, endpoints):
            pass  # a thousand events per transaction, until every event has its deliveries
        if _delivery_pool is not None:
            _delivery_pool.drain()
            return 0
        made = 0
        while deliver_one():
            made += 1
        return made


def deliver_one():
    """Take one due delivery and make one attempt at it; False when nothing is due."""
    config = current_app.config
    schedule = deliveries.RetrySchedule.from_config(config)
    taken = deliveries.take_due(db.session, schedule, limit=1, endpoints=config["WEBHOOK_ENDPOINTS"])
    if not taken:
        return False
    attempt = taken[0]
    error = post(attempt.endpoint, attempt.webhook_id, attempt.body, config["WEBHOOK_SECRET"],
                 config["WEBHOOK_TIMEOUT_SECONDS"])
    if error is None:
        deliveries.record_delivered(db.session, attempt)
    else:
        log.warning("webhook %s to %s failed (attempt %d): %s", attempt.webhook_id, attempt.endpoint,
                    attempt.attempt, error)
        deliveries.record_failed(db.session, attempt, error, schedule)
    return True


class DeliveryPool:
    """WEBHOOK_CONCURRENCY threads that send due deliveries until none is due, apart from the payment
    threads: an endpoint that never answers ties up these, never a payment or the worker's queue."""

    def __init__(self, app, concurrency):
        self.app, self.concurrency = app, concurrency
        self._running = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="webhook")

    def drain(self):
        """Start a draining thread in every idle slot (the busy ones are draining already)."""
        with self._lock:
            idle = self.concurrency - self._running
            self._running += idle
        for _ in range(idle):
            self._executor.submit(self._drain)

    def _drain(self):
        try:
            with self.app.app_context():
                try:
                    while deliver_one():
                        pass
                finally:
                    db.session.remove()
        except Exception:  # noqa: BLE001 - logged; the delivery's lease runs out and it is due again
            log.exception("webhook delivery failed")
        finally:
            with self._lock:
                self._running -= 1

    def shutdown(self):
        """Finish the attempts in flight, then stop the threads."""
        self._executor.shutdown(wait=True)


def install(pool):
    """Make `pool` the one deliveries run on in this process (None: inline)."""
    global _delivery_pool
    _delivery_pool = pool


def start_pool(app):
    """A DeliveryPool of WEBHOOK_CONCURRENCY threads, installed for this process's deliver_webhooks."""
    pool = DeliveryPool(app, app.config["WEBHOOK_CONCURRENCY"])
    install(pool)
    return pool
