"""Accepting a confirmation, taking its payment and reconciling it: the domain verbs, called directly.

Crashes and races between processes are staged for real in tests/test_faults_payments.py and
tests/test_confirmation_races.py; here each step and each answer of the gateway is checked on its own.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select, update

from flashsale.errors import HoldExpired, HoldReleased, PaymentInProgress
from flashsale.extensions import db
from flashsale.gateways import GatewayUnavailable
from flashsale.gateways.fake import FakeGateway
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
from flashsale.models import FakeGatewayCharge, Order, Payment
from tests.paying import confirm_and_pay

NOW_DUE = PaymentPolicy(timeout_seconds=0, final_seconds=900)  # every lease has run out
PAST_FINAL = PaymentPolicy(timeout_seconds=0, final_seconds=0)  # and so has the final deadline


def sound(session, redis):
    return [str(b) for b in audit(session, FakeGateway(db.engine), final_seconds=900)]


# --- accepting --------------------------------------------------------------------------------------

def test_accepting_makes_the_hold_confirming_with_its_event_and_payment(session, redis, shop, make_product):
    pid = make_product(total_stock=2, max_per_customer=2, price_cents=1250)
    held = shop.place(quantity=2)
    accepted = accept_confirmation(session, held.id)
    assert accepted.accepted_now and accepted.hold.status == "CONFIRMING"
    assert accepted.hold.confirmation_requested_at < accepted.hold.hold_expires_at
    assert shop.events(held.id) == ["HOLD_CREATED", "CONFIRMING"]
    paid = shop.payment(held.id)
    assert (paid.state, paid.amount_cents, paid.attempts) == ("started", 2500, 0)
    assert paid.idempotency_key == payment_key(held.id)
    assert stock_levels(session)[pid].available == 0 and stock_levels(session)[pid].paying == 2
    assert sound(session, redis) == []


def test_a_second_click_accepts_nothing_more(session, redis, shop, make_product):
    make_product()
    held = shop.place()
    assert accept_confirmation(session, held.id).accepted_now
    again = accept_confirmation(session, held.id)
    assert not again.accepted_now and again.hold.status == "CONFIRMING"
    assert shop.events(held.id) == ["HOLD_CREATED", "CONFIRMING"]


def test_a_lapsed_hold_cannot_be_accepted_and_nothing_is_written(session, redis, shop, make_product):
    make_product()
    held = shop.place()
    shop.lapse(held.id)
    with pytest.raises(HoldExpired):
        accept_confirmation(session, held.id)
    assert shop.status(held.id) == "PENDING" and shop.events(held.id) == ["HOLD_CREATED"]
    assert session.execute(select(func.count()).select_from(Payment)).scalar_one() == 0


def test_a_released_hold_cannot_be_accepted(session, redis, shop, make_product):
    make_product()
    held = shop.place()
    holds.release_hold(session, redis, held.id)
    with pytest.raises(HoldReleased):
        accept_confirmation(session, held.id)


def test_a_confirming_hold_never_expires_and_keeps_its_units(session, redis, shop, make_product):
    pid = make_product(total_stock=1)
    held = shop.place()
    accept_confirmation(session, held.id)
    shop.lapse(held.id)  # the hold's two minutes run out while the payment is slow
    assert not expiry.expire_hold(session, redis, held.id)
    assert expiry.sweep_expired_holds(session, redis) == 0
    assert shop.status(held.id) == "CONFIRMING"
    assert stock_levels(session)[pid].available == 0
    with pytest.raises(Exception) as refused:
        shop.place("b@x.io")
    assert refused.value.code == "sold_out"
    assert take_payment(session, redis, held.id, FakeGateway(db.engine)).status == "CONFIRMED"
    assert sound(session, redis) == []


def test_the_shopper_cannot_release_a_hold_being_paid_for(session, redis, shop, make_product):
    make_product()
    held = shop.place()
    accept_confirmation(session, held.id)
    with pytest.raises(PaymentInProgress):
        holds.release_hold(session, redis, held.id)
    assert shop.status(held.id) == "CONFIRMING"


# --- paying -----------------------------------------------------------------------------------------

def test_a_captured_payment_confirms_once_and_moves_the_counter(session, redis, shop, make_product):
    pid = make_product(total_stock=3, price_cents=999)
    held = shop.place()
    accept_confirmation(session, held.id)
    gateway = FakeGateway(db.engine)
    settled = take_payment(session, redis, held.id, gateway)
    assert (settled.status, settled.outcome) == ("CONFIRMED", "confirmed") and settled.latency_seconds >= 0
    assert take_payment(session, redis, held.id, gateway).outcome == "skipped"  # the job ran twice
    assert shop.events(held.id) == ["HOLD_CREATED", "CONFIRMING", "CONFIRMED"]
    paid = shop.payment(held.id)
    assert (paid.state, paid.attempts) == ("captured", 1)
    assert gateway.find(payment_key(held.id)).status == "captured"
    assert gateway.calls(payment_key(held.id)) == 1
    assert stock_levels(session)[pid].confirmed == 1
    assert sound(session, redis) == []


def test_a_refused_payment_releases_the_hold_and_clears_the_sold_out_mark(session, redis, shop, make_product):
    pid = make_product(total_stock=1)
    held = shop.place("cy+refuse@x.io")
    assert soldout.is_marked(redis, pid)  # the last unit was held
    accept_confirmation(session, held.id)
    settled = take_payment(session, redis, held.id, FakeGateway(db.engine))
    assert (settled.status, settled.outcome) == ("RELEASED", "refused")
    assert shop.payment(held.id).state == "refused"
    assert shop.events(held.id) == ["HOLD_CREATED", "CONFIRMING", "RELEASED"]
    assert stock_levels(session)[pid].available == 1 and not soldout.is_marked(redis, pid)
    assert shop.place("next@x.io").status == "PENDING"
    assert sound(session, redis) == []


def test_an_attempt_holds_a_lease_no_other_attempt_takes(session, redis, shop, make_product):
    make_product()
    held = shop.place("slow+timeout@x.io")
    accept_confirmation(session, held.id)
    assert take_payment(session, redis, held.id, FakeGateway(db.engine)).outcome == "pending"
    # The lease (30 s) has not run out: neither a second job nor a reconciler starts another attempt.
    assert take_payment(session, redis, held.id, FakeGateway(db.engine)).outcome == "skipped"
    assert reconcile_payment(session, redis, held.id, FakeGateway(db.engine)).outcome == "skipped"
    assert due_payments(session) == []
    assert shop.payment(held.id).attempts == 1


# --- reconciling ------------------------------------------------------------------------------------

def test_a_charge_that_never_reached_the_gateway_is_charged_again_with_the_same_key(
        session, redis, shop, make_product):
    make_product()
    held = shop.place("slow+timeout@x.io")
    accept_confirmation(session, held.id)
    gateway = FakeGateway(db.engine)
    assert take_payment(session, redis, held.id, gateway).outcome == "pending"
    assert gateway.find(payment_key(held.id)) is None  # it timed out before the gateway took anything
    assert due_payments(session, NOW_DUE) == [held.id]
    settled = reconcile_payment(session, redis, held.id, gateway, NOW_DUE)
    assert (settled.status, settled.outcome) == ("CONFIRMED", "confirmed")
    assert shop.payment(held.id).attempts == 2
    assert sound(session, redis) == []


def test_a_capture_whose_answer_was_lost_is_found_not_charged_twice(session, redis, shop, make_product):
    make_product()
    held = shop.place("unlucky+lost@x.io")
    accept_confirmation(session, held.id)
    gateway = FakeGateway(db.engine)
    assert take_payment(session, redis, held.id, gateway).outcome == "pending"
    assert gateway.find(payment_key(held.id)).status == "captured"  # the money was taken
    assert "CONFIRMING hold" not in " ".join(sound(session, redis))  # in flight, not a breach
    settled = reconcile_payment(session, redis, held.id, gateway, NOW_DUE)
    assert settled.status == "CONFIRMED"
    assert gateway.calls(payment_key(held.id)) == 1  # found, not re-sent
    assert sound(session, redis) == []


def test_past_the_final_deadline_an_unreached_payment_is_voided_and_the_hold_released(
        session, redis, shop, make_product):
    pid = make_product(total_stock=1)
    held = shop.place("gone+down@x.io")
    accept_confirmation(session, held.id)
    gateway = FakeGateway(db.engine)
    assert take_payment(session, redis, held.id, gateway).outcome == "pending"
    assert reconcile_payment(session, redis, held.id, gateway, NOW_DUE).outcome == "pending"  # still down
    settled = reconcile_payment(session, redis, held.id, gateway, PAST_FINAL)
    assert (settled.status, settled.outcome) == ("RELEASED", "voided")
    assert shop.payment(held.id).state == "voided"
    assert stock_levels(session)[pid].available == 1
    # The key is dead at the gateway: a charge still on its way can never take the money.
    hold_id = held.id  # read before the commit expires it
    session.commit()  # the gateway is called outside any transaction: on SQLite one holds the only write lock
    late = FakeGateway(db.engine).charge(payment_key(hold_id), 49999, "gone@x.io", hold_id)
    assert not late.approved and late.status == "voided"
    assert sound(session, redis) == []


def test_past_the_final_deadline_a_capture_still_confirms(session, redis, shop, make_product):
    make_product()
    held = shop.place("unlucky+lost@x.io")
    accept_confirmation(session, held.id)
    take_payment(session, redis, held.id, FakeGateway(db.engine))
    assert reconcile_payment(session, redis, held.id, FakeGateway(db.engine), PAST_FINAL).status == "CONFIRMED"


def test_a_capture_for_a_hold_that_ended_otherwise_is_refunded(session, redis, shop, make_product):
    """A gateway that cannot void a charge already on its way: the late capture is given back."""
    make_product()
    held = shop.place("gone+down@x.io")
    accept_confirmation(session, held.id)

    class UnvoidableGateway(FakeGateway):
        def void(self, key):
            return None  # the provider accepted the void, but a charge was already in flight

    take_payment(session, redis, held.id, FakeGateway(db.engine))
    assert reconcile_payment(session, redis, held.id, UnvoidableGateway(db.engine), PAST_FINAL).status == "RELEASED"
    hold_id = held.id  # read before the commit expires it
    session.commit()  # the gateway is called outside any transaction: on SQLite one holds the only write lock
    late = FakeGateway(db.engine)._store(payment_key(hold_id), "captured", 49999, hold_id)  # it lands now
    settled = settle(session, redis, held.id, late, FakeGateway(db.engine))
    assert settled.outcome == "refunded" and shop.status(held.id) == "RELEASED"
    assert shop.payment(held.id).state == "refunded"
    assert FakeGateway(db.engine).find(payment_key(held.id)).status == "refunded"
    assert sound(session, redis) == []


def test_a_refund_a_crash_left_owed_is_found(session, redis, shop, make_product):
    make_product()
    held = shop.place()
    accept_confirmation(session, held.id)
    take_payment(session, redis, held.id, FakeGateway(db.engine))
    session.execute(update(Order).values(status="RELEASED"))  # a hold that ended otherwise ...
    session.commit()
    assert refunds_owed(session) == [(held.id, payment_key(held.id))]  # ... with its capture kept


def test_the_gateway_answers_the_same_charge_for_a_repeated_key(redis, ctx):
    gateway = FakeGateway(db.engine)
    first = gateway.charge("k-1", 500, "a@x.io", "h")
    again = gateway.charge("k-1", 900, "a@x.io", "h")
    assert again == first and first.approved and first.amount_cents == 500
    assert gateway.refund(first).status == "refunded" and gateway.refund(first).status == "refunded"
    assert [c.key for c in gateway.charges()] == ["k-1"]
    with pytest.raises(GatewayUnavailable):
        FakeGateway(db.engine, fault="down").charge("k-2", 500, "a@x.io")
    assert gateway.find("k-2") is None


def test_the_fake_gateways_charges_and_refunds_survive_the_loss_of_redis_data(app, session, redis, shop, make_product):
    """A Redis failover that loses the last writes (here all of them: FLUSHDB of the test Redis db) loses
    none of the fake's record, which is in its own table: `flask audit` still finds the CONFIRMED hold's
    capture and the refund of the RELEASED hold's late capture, and passes. With the record in Redis the
    same loss made it report goods without money (no charge for a CONFIRMED hold), and a lost refund
    money without goods (a capture for a RELEASED hold): both shown at the end by losing the rows."""
    make_product()
    paid, late_one = shop.place("paid@x.io").id, shop.place("late+down@x.io").id
    confirm_and_pay(session, redis, paid)
    accept_confirmation(session, late_one)
    take_payment(session, redis, late_one, FakeGateway(db.engine))  # no answer: the gateway is down

    class UnvoidableGateway(FakeGateway):
        def void(self, key):
            return None  # a charge was already in flight

    assert reconcile_payment(session, redis, late_one, UnvoidableGateway(db.engine), PAST_FINAL).status == "RELEASED"
    session.commit()  # the gateway is called outside any transaction: on SQLite one holds the only write lock
    late = FakeGateway(db.engine)._store(payment_key(late_one), "captured", 49999, late_one)  # it lands now
    assert settle(session, redis, late_one, late, FakeGateway(db.engine)).outcome == "refunded"
    session.commit()

    redis.flushdb()  # the failover lost Redis's writes: the fake's record is not among them

    gateway = FakeGateway(db.engine)
    assert {c.reference: c.status for c in gateway.charges()} == {paid: "captured", late_one: "refunded"}
    audited = app.test_cli_runner().invoke(args=["audit"])
    assert audited.exit_code == 0, audited.output

    charges = FakeGatewayCharge.__table__
    with db.engine.begin() as connection:  # what losing the last writes did to the record in Redis:
        connection.execute(charges.delete().where(charges.c.idempotency_key == payment_key(paid)))
        connection.execute(charges.update().where(charges.c.idempotency_key == payment_key(late_one))
                           .values(status="captured"))  # the refund's write lost
    lost = app.test_cli_runner().invoke(args=["audit"])
    assert lost.exit_code == 1
    assert f"{paid}: CONFIRMED but the gateway holds no charge for it" in lost.output
    assert f"{late_one}: the gateway holds a capture for a RELEASED hold" in lost.output


def test_the_fake_gateway_with_its_database_unreachable_gives_no_answer():
    """Its database away is a provider that did not answer: GatewayUnavailable (reconciliation asks later),
    never an error the payment job does not expect."""
    nowhere = create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 2})
    gateway = FakeGateway(nowhere)
    for call in (lambda: gateway.charge("k-1", 500, "a@x.io"), lambda: gateway.find("k-1"),
                 lambda: gateway.void("k-1")):
        with pytest.raises(GatewayUnavailable):
            call()


def test_racing_charges_and_voids_of_one_key_all_get_the_one_outcome_it_recorded(ctx):
    """Twelve threads at once, half charging one key (each a different amount) and half voiding it: every
    answer names the same charge, and the gateway holds one for the key (its primary key decides)."""
    engine = db.engine
    for round_ in range(5):
        key, start = f"race-{round_}", threading.Barrier(12)

        def call(i, key=key, start=start):
            gateway = FakeGateway(engine)
            start.wait()
            if i % 2:
                return gateway.void(key) or gateway.find(key)
            return gateway.charge(key, 100 + i, "race@x.io", "h")

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(call, range(12)))
        assert len({(a.id, a.status, a.amount_cents) for a in answers}) == 1, answers
        assert [c.id for c in FakeGateway(engine).charges() if c.key == key] == [answers[0].id]
        assert FakeGateway(engine).calls(key) == 6  # every charge call counted, none lost
