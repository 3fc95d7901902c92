"""Accepting a confirmation, taking its payment and reconciling it: the domain verbs, called directly.

Crashes and races between processes are staged for real in tests/test_faults_payments.py and
tests/test_confirmation_races.py; here each step and each answer of the gateway is checked on its own.
"""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from flashsale import keys
from flashsale.errors import HoldExpired, HoldReleased, PaymentInProgress
from flashsale.gateways import FakeGateway, GatewayUnavailable
from flashsale.inventory import expiry, holds, soldout
from flashsale.inventory.audit import audit
from flashsale.inventory.confirmation import accept_confirmation, payment_key
from flashsale.inventory.payments import (
    PaymentPolicy,
    due_payments,
    reconcile_payment,
    refunds_owed,
    settle,
    take_payment,
)
from flashsale.inventory.stock import stock_levels
from flashsale.models import InventoryEvent, Order, Payment

NOW_DUE = PaymentPolicy(timeout_seconds=0, final_seconds=900)  # every lease has run out
PAST_FINAL = PaymentPolicy(timeout_seconds=0, final_seconds=0)  # and so has the final deadline


def place(session, redis, policy, email="a@x.io", quantity=1, slug="ps5"):
    return holds.place_hold(session, redis, slug, email, quantity, policy).hold


def events(session, hold_id):
    return session.execute(select(InventoryEvent.type).where(InventoryEvent.order_id == hold_id)
                           .order_by(InventoryEvent.id)).scalars().all()


def payment(session, hold_id):
    session.expire_all()
    return session.execute(select(Payment).where(Payment.order_id == hold_id)).scalar_one()


def status(session, hold_id):
    session.expire_all()
    return session.get(Order, hold_id).status


def lapse(session, hold_id):
    """Move a hold's expiry into the past (and its acceptance before that), as if time ran on."""
    session.execute(update(Order).where(Order.id == hold_id)
                    .values(hold_expires_at=func.now() - timedelta(seconds=1)))
    session.execute(update(Order).where(Order.id == hold_id, Order.confirmation_requested_at.is_not(None))
                    .values(confirmation_requested_at=func.now() - timedelta(seconds=2)))
    session.commit()


def sound(session, redis):
    return [str(b) for b in audit(session, FakeGateway(redis), final_seconds=900)]


# --- accepting --------------------------------------------------------------------------------------

def test_accepting_makes_the_hold_confirming_with_its_event_and_payment(session, redis, make_product, policy):
    pid = make_product(total_stock=2, max_per_customer=2, price_cents=1250)
    held = place(session, redis, policy, quantity=2)
    accepted = accept_confirmation(session, held.id)
    assert accepted.accepted_now and accepted.hold.status == "CONFIRMING"
    assert accepted.hold.confirmation_requested_at < accepted.hold.hold_expires_at
    assert events(session, held.id) == ["HOLD_CREATED", "CONFIRMING"]
    paid = payment(session, held.id)
    assert (paid.state, paid.amount_cents, paid.attempts) == ("started", 2500, 0)
    assert paid.idempotency_key == payment_key(held.id)
    assert stock_levels(session)[pid].available == 0 and stock_levels(session)[pid].paying == 2
    assert sound(session, redis) == []


def test_a_second_click_accepts_nothing_more(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    assert accept_confirmation(session, held.id).accepted_now
    again = accept_confirmation(session, held.id)
    assert not again.accepted_now and again.hold.status == "CONFIRMING"
    assert events(session, held.id) == ["HOLD_CREATED", "CONFIRMING"]


def test_a_lapsed_hold_cannot_be_accepted_and_nothing_is_written(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    lapse(session, held.id)
    with pytest.raises(HoldExpired):
        accept_confirmation(session, held.id)
    assert status(session, held.id) == "PENDING" and events(session, held.id) == ["HOLD_CREATED"]
    assert session.execute(select(func.count()).select_from(Payment)).scalar_one() == 0


def test_a_released_hold_cannot_be_accepted(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    holds.release_hold(session, redis, held.id)
    with pytest.raises(HoldReleased):
        accept_confirmation(session, held.id)


def test_a_confirming_hold_never_expires_and_keeps_its_units(session, redis, make_product, policy):
    pid = make_product(total_stock=1)
    held = place(session, redis, policy)
    accept_confirmation(session, held.id)
    lapse(session, held.id)  # the hold's two minutes run out while the payment is slow
    assert not expiry.expire_hold(session, redis, held.id)
    assert expiry.sweep_expired_holds(session, redis) == 0
    assert status(session, held.id) == "CONFIRMING"
    assert stock_levels(session)[pid].available == 0
    with pytest.raises(Exception) as refused:
        place(session, redis, policy, "b@x.io")
    assert refused.value.code == "sold_out"
    assert take_payment(session, redis, held.id, FakeGateway(redis)).status == "CONFIRMED"
    assert sound(session, redis) == []


def test_the_shopper_cannot_release_a_hold_being_paid_for(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    accept_confirmation(session, held.id)
    with pytest.raises(PaymentInProgress):
        holds.release_hold(session, redis, held.id)
    assert status(session, held.id) == "CONFIRMING"


# --- paying -----------------------------------------------------------------------------------------

def test_a_captured_payment_confirms_once_and_moves_the_counter(session, redis, make_product, policy):
    pid = make_product(total_stock=3, price_cents=999)
    held = place(session, redis, policy)
    accept_confirmation(session, held.id)
    gateway = FakeGateway(redis)
    settled = take_payment(session, redis, held.id, gateway)
    assert (settled.status, settled.outcome) == ("CONFIRMED", "confirmed") and settled.latency_seconds >= 0
    assert take_payment(session, redis, held.id, gateway).outcome == "skipped"  # the job ran twice
    assert events(session, held.id) == ["HOLD_CREATED", "CONFIRMING", "CONFIRMED"]
    paid = payment(session, held.id)
    assert (paid.state, paid.attempts) == ("captured", 1)
    assert gateway.find(payment_key(held.id)).status == "captured"
    assert redis.hget(keys.fake_gateway_charge(payment_key(held.id)), "calls") == b"1"
    assert stock_levels(session)[pid].confirmed == 1
    assert sound(session, redis) == []


def test_a_refused_payment_releases_the_hold_and_clears_the_sold_out_mark(session, redis, make_product,
                                                                          policy):
    pid = make_product(total_stock=1)
    held = place(session, redis, policy, "cy+refuse@x.io")
    assert soldout.is_marked(redis, pid)  # the last unit was held
    accept_confirmation(session, held.id)
    settled = take_payment(session, redis, held.id, FakeGateway(redis))
    assert (settled.status, settled.outcome) == ("RELEASED", "refused")
    assert payment(session, held.id).state == "refused"
    assert events(session, held.id) == ["HOLD_CREATED", "CONFIRMING", "RELEASED"]
    assert stock_levels(session)[pid].available == 1 and not soldout.is_marked(redis, pid)
    assert place(session, redis, policy, "next@x.io").status == "PENDING"
    assert sound(session, redis) == []


def test_an_attempt_holds_a_lease_no_other_attempt_takes(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy, "slow+timeout@x.io")
    accept_confirmation(session, held.id)
    assert take_payment(session, redis, held.id, FakeGateway(redis)).outcome == "pending"
    # The lease (30 s) has not run out: neither a second job nor a reconciler starts another attempt.
    assert take_payment(session, redis, held.id, FakeGateway(redis)).outcome == "skipped"
    assert reconcile_payment(session, redis, held.id, FakeGateway(redis)).outcome == "skipped"
    assert due_payments(session) == []
    assert payment(session, held.id).attempts == 1


# --- reconciling ------------------------------------------------------------------------------------

def test_a_charge_that_never_reached_the_gateway_is_charged_again_with_the_same_key(
        session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy, "slow+timeout@x.io")
    accept_confirmation(session, held.id)
    gateway = FakeGateway(redis)
    assert take_payment(session, redis, held.id, gateway).outcome == "pending"
    assert gateway.find(payment_key(held.id)) is None  # it timed out before the gateway took anything
    assert due_payments(session, NOW_DUE) == [held.id]
    settled = reconcile_payment(session, redis, held.id, gateway, NOW_DUE)
    assert (settled.status, settled.outcome) == ("CONFIRMED", "confirmed")
    assert payment(session, held.id).attempts == 2
    assert sound(session, redis) == []


def test_a_capture_whose_answer_was_lost_is_found_not_charged_twice(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy, "unlucky+lost@x.io")
    accept_confirmation(session, held.id)
    gateway = FakeGateway(redis)
    assert take_payment(session, redis, held.id, gateway).outcome == "pending"
    assert gateway.find(payment_key(held.id)).status == "captured"  # the money was taken
    assert "CONFIRMING hold" not in " ".join(sound(session, redis))  # in flight, not a breach
    settled = reconcile_payment(session, redis, held.id, gateway, NOW_DUE)
    assert settled.status == "CONFIRMED"
    assert redis.hget(keys.fake_gateway_charge(payment_key(held.id)), "calls") == b"1"  # found, not re-sent
    assert sound(session, redis) == []


def test_past_the_final_deadline_an_unreached_payment_is_voided_and_the_hold_released(
        session, redis, make_product, policy):
    pid = make_product(total_stock=1)
    held = place(session, redis, policy, "gone+down@x.io")
    accept_confirmation(session, held.id)
    gateway = FakeGateway(redis)
    assert take_payment(session, redis, held.id, gateway).outcome == "pending"
    assert reconcile_payment(session, redis, held.id, gateway, NOW_DUE).outcome == "pending"  # still down
    settled = reconcile_payment(session, redis, held.id, gateway, PAST_FINAL)
    assert (settled.status, settled.outcome) == ("RELEASED", "voided")
    assert payment(session, held.id).state == "voided"
    assert stock_levels(session)[pid].available == 1
    # The key is dead at the gateway: a charge still on its way can never take the money.
    late = FakeGateway(redis).charge(payment_key(held.id), 49999, "gone@x.io", held.id)
    assert not late.approved and late.status == "voided"
    assert sound(session, redis) == []


def test_past_the_final_deadline_a_capture_still_confirms(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy, "unlucky+lost@x.io")
    accept_confirmation(session, held.id)
    take_payment(session, redis, held.id, FakeGateway(redis))
    assert reconcile_payment(session, redis, held.id, FakeGateway(redis), PAST_FINAL).status == "CONFIRMED"


def test_a_capture_for_a_hold_that_ended_otherwise_is_refunded(session, redis, make_product, policy):
    """A gateway that cannot void a charge already on its way: the late capture is given back."""
    make_product()
    held = place(session, redis, policy, "gone+down@x.io")
    accept_confirmation(session, held.id)

    class UnvoidableGateway(FakeGateway):
        def void(self, key):
            return None  # the provider accepted the void, but a charge was already in flight

    take_payment(session, redis, held.id, FakeGateway(redis))
    assert reconcile_payment(session, redis, held.id, UnvoidableGateway(redis), PAST_FINAL).status == "RELEASED"
    late = FakeGateway(redis)._store(payment_key(held.id), "captured", 49999, held.id)  # it lands now
    settled = settle(session, redis, held.id, late, FakeGateway(redis))
    assert settled.outcome == "refunded" and status(session, held.id) == "RELEASED"
    assert payment(session, held.id).state == "refunded"
    assert FakeGateway(redis).find(payment_key(held.id)).status == "refunded"
    assert sound(session, redis) == []


def test_a_refund_a_crash_left_owed_is_found(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    accept_confirmation(session, held.id)
    take_payment(session, redis, held.id, FakeGateway(redis))
    session.execute(update(Order).values(status="RELEASED"))  # a hold that ended otherwise ...
    session.commit()
    assert refunds_owed(session) == [(held.id, payment_key(held.id))]  # ... with its capture kept


def test_the_gateway_answers_the_same_charge_for_a_repeated_key(redis, ctx):
    gateway = FakeGateway(redis)
    first = gateway.charge("k-1", 500, "a@x.io", "h")
    again = gateway.charge("k-1", 900, "a@x.io", "h")
    assert again == first and first.approved and first.amount_cents == 500
    assert gateway.refund(first).status == "refunded" and gateway.refund(first).status == "refunded"
    assert [c.key for c in gateway.charges()] == ["k-1"]
    with pytest.raises(GatewayUnavailable):
        FakeGateway(redis, fault="down").charge("k-2", 500, "a@x.io")
    assert gateway.find("k-2") is None
