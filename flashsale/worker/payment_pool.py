"""The worker's pool of payment threads: many gateway calls in flight from one `flask worker`.

A charge is a network call that waits (100-500 ms at a real provider) and computes nothing, so one
worker process runs PAYMENT_CONCURRENCY of them at once on threads, each in its own app context with
its own database session. The RQ job that asks for a payment only hands it to the pool, so the worker
goes straight back to the queue (expiry, sweeping and reconciliation are never stuck behind charges).
The pool takes at most twice its threads: past that, the handing-over job waits for a free slot, which
keeps an RQ backlog in Redis rather than in this process's memory.

What a crash loses here is harmless: every payment is on record (payments table) before the gateway is
called, and reconciliation settles any attempt whose lease has run out.
"""

import contextvars
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from ..extensions import db

log = logging.getLogger(__name__)
_installed = None


class PaymentPool:
    """Run payment work on `concurrency` threads inside `app`; submit() blocks while the pool is full."""

    def __init__(self, app, concurrency):
        self.app = app
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency * 2)  # running + waiting to run
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="payment")

    def submit(self, work, *args):
        """Run work(*args) on a payment thread, waiting for a slot if every one is taken."""
        self._slots.acquire()
        try:
            # The job's context goes along, so the payment's log lines name its request and job.
            return self._executor.submit(contextvars.copy_context().run, self._run, work, args)
        except BaseException:
            self._slots.release()
            raise

    def _run(self, work, args):
        try:
            with self.app.app_context():
                try:
                    return work(*args)
                finally:
                    db.session.remove()
        except Exception:  # noqa: BLE001 - logged; the payment stays on record for reconciliation
            log.exception("payment work %s%r failed", getattr(work, "__name__", work), args)
            return None
        finally:
            self._slots.release()

    def shutdown(self):
        """Finish the payments in flight (a warm shutdown), then stop the threads."""
        self._executor.shutdown(wait=True)


def install(pool):
    """Make `pool` the one this process's payment jobs hand their work to (None: run inline)."""
    global _installed
    _installed = pool


def current():
    """The installed pool, or None in processes without one (tests, `rq worker`): work runs inline."""
    return _installed
