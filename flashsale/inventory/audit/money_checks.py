"""Money follows the outcome (invariant 9): our payments against our holds, then the gateway's charges
against both.

The gateway is not in the database snapshot. Its list is read after the snapshot was taken, and a
payment is always written (and committed) before the gateway is called, so: a hold CONFIRMED in the
snapshot has its capture in the list; a capture in the list whose payment the snapshot lacks was either
made after the snapshot or is a real stray, and a fresh read of the database after the list tells
which (its payment exists by then, or never will).
"""

from collections import Counter
from datetime import timedelta
from itertools import islice

from sqlalchemy import and_, case, func, not_, or_, select

from ...gateways import CAPTURED, REFUNDED
from ...models import (
    CONFIRMED,
    CONFIRMING,
    EXPIRED,
    PENDING,
    REFUSED,
    RELEASED,
    STARTED,
    VOIDED,
    Order,
    Payment,
)
from .findings import Breach, Sample, check

MONEY = "9 money follows the outcome"
MISSING = "missing"  # a hold with no payment, as the SQL below names it
# The payment states each hold status allows (MISSING: no payment).
PAYMENT_STATES = {
    PENDING: {MISSING}, EXPIRED: {MISSING}, CONFIRMING: {STARTED}, CONFIRMED: {CAPTURED},
    RELEASED: {MISSING, REFUSED, VOIDED, REFUNDED},
}
BATCH = 500  # keys per lookup of the gateway's charges


def batched(items, size):
    """Lists of up to `size` items in order (itertools.batched from Python 3.12)."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


@check(MONEY)
def payments(view):
    """Each hold's payment is what its status allows, one per hold, and only for accepted confirmations."""
    paid = func.count(Payment.id)
    state = func.coalesce(func.max(Payment.state), MISSING)
    allowed = or_(*(and_(Order.status == status, state.in_(sorted(states)))
                    for status, states in PAYMENT_STATES.items()))
    unaccepted = and_(paid > 0, Order.confirmation_requested_at.is_(None))
    query = (select(Order.id, Order.status, state.label("state"), paid.label("payments"),
                    not_(allowed).label("wrong"), unaccepted.label("unaccepted"))
             .outerjoin(Payment, Payment.order_id == Order.id)
             .where(view.holds(), or_(Payment.id.is_not(None), Order.status.in_([CONFIRMING, CONFIRMED])))
             .group_by(Order.id, Order.status, Order.confirmation_requested_at)
             .having(or_(paid > 1, not_(allowed), unaccepted)))
    count, rows = view.offending(query)
    sample = []
    for row in rows:
        if row.payments > 1:
            sample.append(Breach(MONEY, row.id, f"{row.payments} payments"))
        if row.wrong:
            owed = " (refund owed)" if row.state == CAPTURED else ""
            sample.append(Breach(MONEY, row.id, f"{row.status} hold with payment {row.state}{owed}"))
        elif row.unaccepted:
            sample.append(Breach(MONEY, row.id, "a payment for a hold whose confirmation was never accepted"))
    return count, sample


@check(MONEY)
def unsettled_payments(view):
    """Holds CONFIRMING past PAYMENT_FINAL_SECONDS (plus a minute for the reconciler to get round to it)."""
    if view.final_seconds is None:
        return 0, []
    deadline = view.now - timedelta(seconds=view.final_seconds + 60)
    query = select(Order.id, Order.confirmation_requested_at).where(
        view.holds(), Order.status == CONFIRMING, Order.confirmation_requested_at < deadline)
    count, rows = view.offending(query)
    waited = {row.id: (view.now - row.confirmation_requested_at).total_seconds() for row in rows}
    return count, [Breach(MONEY, hold_id, f"CONFIRMING for {seconds:.0f} s, past the final deadline of "
                                          f"{view.final_seconds:g} s") for hold_id, seconds in waited.items()]


@check(MONEY)
def gateway_charges(view):
    """The gateway's own list: every capture is a CONFIRMED (or CONFIRMING) hold's, none twice for a
    hold, and every CONFIRMED hold's payment is captured there (not refunded)."""
    if view.gateway is None or not hasattr(view.gateway, "charges"):
        return 0, []
    listed = view.gateway.charges()  # after the snapshot: see the module's docstring
    found = Sample(MONEY, view.sample)
    _charged_twice(view, listed, found)
    strays = []
    for batch in batched(listed, BATCH):
        ours = {row.key: row for row in view.connection.execute(
            select(Payment.idempotency_key.label("key"), Order.id, Order.status,
                   case((view.holds(), 1), else_=0).label("in_scope"))
            .join(Order, Order.id == Payment.order_id)
            .where(Payment.idempotency_key.in_([charge.key for charge in batch])))}
        for charge in batch:
            row = ours.get(charge.key)
            if row is None:
                if charge.status == CAPTURED:
                    strays.append(charge)
            elif row.in_scope:
                _compare(charge, row, found)
    _confirmed_without_a_charge(view, {charge.key for charge in listed}, found)
    _stray_captures(view, strays, found)
    return found.result()


def _compare(charge, hold, found):
    if charge.status == CAPTURED and hold.status not in (CONFIRMED, CONFIRMING):
        found.add(hold.id, f"the gateway holds a capture for a {hold.status} hold")
    elif hold.status == CONFIRMED and charge.status == REFUNDED:
        found.add(hold.id, "CONFIRMED but the gateway refunded its charge")
    elif hold.status == CONFIRMED and charge.status != CAPTURED:
        found.add(hold.id, f"CONFIRMED but the gateway's charge is {charge.status}")


def _charged_twice(view, listed, found):
    """Holds the gateway took money for under more than one key."""
    taken = Counter(charge.reference for charge in listed
                    if charge.status in (CAPTURED, REFUNDED) and charge.reference)
    twice = {hold_id: times for hold_id, times in taken.items() if times > 1}
    for hold_id in _in_scope(view, view.connection, twice):
        found.add(hold_id, f"charged {twice[hold_id]} times at the gateway")


def _confirmed_without_a_charge(view, charged_keys, found):
    """CONFIRMED holds in scope whose key the gateway never charged (streamed: no list in memory).
    Payments backfilled by migration 0003 predate the gateway's records and are left out."""
    confirmed = (select(Payment.idempotency_key, Order.id).join(Order, Order.id == Payment.order_id)
                 .where(Order.status == CONFIRMED, view.holds(), Payment.charge_ref.not_like("backfilled-%"))
                 .execution_options(yield_per=1000))
    for key, hold_id in view.connection.execute(confirmed):
        if key not in charged_keys:
            found.add(hold_id, "CONFIRMED but the gateway holds no charge for it")


def _stray_captures(view, strays, found):
    """Captures whose payment the snapshot lacks and a fresh read still lacks: money taken for a hold
    whose confirmation was never accepted (a payment is written before the gateway is called)."""
    if not strays:
        return
    with view.fresh_read() as connection:
        for batch in batched(strays, BATCH):
            known = set(connection.execute(select(Payment.idempotency_key).where(
                Payment.idempotency_key.in_([charge.key for charge in batch]))).scalars())
            unpaid = [charge for charge in batch if charge.key not in known]
            statuses = dict(connection.execute(select(Order.id, Order.status).where(
                Order.id.in_([charge.reference for charge in unpaid]))).all())
            named = set(_in_scope(view, connection, statuses))
            for charge in unpaid:
                status = statuses.get(charge.reference)
                if status is None and not view.scoped:
                    found.add(charge.reference or charge.key, "the gateway holds a capture for no hold of ours")
                elif charge.reference in named:
                    found.add(charge.reference, f"the gateway holds a capture for a {status} hold "
                                                "whose confirmation was never accepted")


def _in_scope(view, connection, hold_ids):
    """The holds among hold_ids that the audit covers (all of them, known or not, when it covers the shop)."""
    if not view.scoped:
        return list(hold_ids)
    return [hold_id for batch in batched(hold_ids, BATCH) for hold_id in connection.execute(
        select(Order.id).where(Order.id.in_(batch), view.holds())).scalars()]
