"""`flask audit`: the invariants of design section 3 (1, 3, 4, 5, 6, 8, 9) and the outbox (12), on one snapshot.

Every check reads the same consistent snapshot (view.py), so the audit is exact at one instant even
while a sale runs, and each computes its invariant in SQL, returning only the offending rows: a count
and a bounded sample. Memory stays flat; time follows the sales audited (Scope: some products, or the
holds placed in a window), not the shop's history.

Adding a check: write a function of an AuditView that returns (count, sample of Breaches), mark it
with @check("N invariant name"), and list it in CHECKS. In SQL, view.offending(query) gives both in one
statement (query: the offending rows, filtered by view.holds() or view.of_products()); in Python, a
Sample counts and keeps them. Read through view.connection only: it is the snapshot.
"""

import time

from . import ledger_checks, money_checks, outbox_checks, stock_checks, stripe_checks
from .findings import SAMPLE, Breach, Finding, Report, Sample, check
from .view import WHOLE_SHOP, AuditView, Scope, UnknownProduct, consistent_read

__all__ = ["CHECKS", "SAMPLE", "WHOLE_SHOP", "AuditView", "Breach", "Finding", "Report", "Sample", "Scope",
           "UnknownProduct", "audit", "audit_report", "check", "consistent_read"]

CHECKS = (
    stock_checks.oversold,
    ledger_checks.holds_without_one_creation,
    ledger_checks.events_without_a_hold,
    ledger_checks.outcomes,
    ledger_checks.wrong_deltas,
    ledger_checks.sale_balances,
    ledger_checks.confirmed_counters,
    stock_checks.shared_idempotency_keys,
    stock_checks.customers_over_the_limit,
    money_checks.payments,
    money_checks.unsettled_payments,
    money_checks.gateway_charges,
    stripe_checks.stripe_intents,
    outbox_checks.confirmed_orders_announced,
    outbox_checks.unconfirmed_orders_announced,
)


def audit_report(session, gateway=None, final_seconds=None, scope=WHOLE_SHOP, sample=SAMPLE, checks=CHECKS):
    """Run every check on one snapshot of the database `session` is bound to; a Report.

    gateway: also compare the gateway's own charges with the holds (when it can list them).
    final_seconds: PAYMENT_FINAL_SECONDS; a hold CONFIRMING longer than that (plus a minute for the
    reconciler to get round to it) is a payment nobody settled.
    The caller's session is not used for reading, so its transaction, if any, is left alone.
    Raises UnknownProduct when the scope names a product the database does not have.
    """
    started = time.monotonic()
    with consistent_read(session.get_bind(), scope, sample, gateway, final_seconds) as view:
        findings = tuple(Finding(run.__name__, run.invariant, *_counted(run(view))) for run in checks)
        at, described = view.now, view.describe()
    return Report(at, described, time.monotonic() - started, findings)


def audit(session, gateway=None, final_seconds=None, scope=WHOLE_SHOP, sample=SAMPLE):
    """Every breach found (up to `sample` per check; empty when sound)."""
    return audit_report(session, gateway, final_seconds, scope, sample).breaches


def _counted(found):
    count, sample = found
    return int(count), tuple(sample)
