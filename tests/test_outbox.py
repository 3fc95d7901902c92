"""The outbox: the shop's events are written with the change that causes them, and only then."""

import json

import pytest
from sqlalchemy import delete, select

from flashsale.extensions import db
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory import expiry, holds, payments
from flashsale.inventory.audit import audit
from flashsale.inventory.confirmation import accept_confirmation, payment_key
from flashsale.inventory.outbox import order_confirmed
from flashsale.inventory.payments import PaymentPolicy, reconcile_payment, settle, take_payment
from flashsale.models import WebhookEvent
from tests.paying import confirm_and_pay

PAST_FINAL = PaymentPolicy(timeout_seconds=0, final_seconds=0)


def outbox(session):
    """[(type, hold id, parsed body)] of every event, oldest first."""
    rows = session.execute(select(WebhookEvent.type, WebhookEvent.hold_id, WebhookEvent.body)
                           .order_by(WebhookEvent.id)).all()
    session.commit()
    return [(kind, hold_id, json.loads(body)) for kind, hold_id, body in rows]


def test_a_captured_payment_writes_one_order_confirmed_with_what_the_shop_ships(session, redis, shop,
                                                                                make_product):
    make_product(total_stock=5, max_per_customer=2, price_cents=1250, currency="eur")
    held = shop.place("Ship.Me@Example.com", quantity=2)
    assert confirm_and_pay(session, redis, held.id).outcome == "confirmed"
    take_payment(session, redis, held.id, FakeGateway(db.engine))  # a second attempt settles nothing new
    [(kind, hold_id, body)] = outbox(session)
    assert (kind, hold_id, body["type"]) == ("order.confirmed", held.id, "order.confirmed")
    data = body["data"]
    assert data["id"] == held.id and data["status"] == "CONFIRMED" and data["quantity"] == 2
    assert data["email"] == "ship.me@example.com"  # unmasked (normalised lower-case when placed)
    assert (data["product_slug"], data["amount_cents"], data["currency"]) == ("ps5", 2500, "eur")
    assert data["payment_reference"] == shop.payment(held.id).charge_ref and data["payment_reference"]
    assert data["confirmed_at"] and body["timestamp"]


def test_released_expired_and_refused_holds_are_never_announced(session, redis, shop, make_product):
    make_product(total_stock=10, max_per_customer=5)
    released = shop.place("released@x.io")
    holds.release_hold(session, redis, released.id)
    lapsed = shop.place("lapsed@x.io")
    shop.lapse(lapsed.id)
    assert expiry.expire_hold(session, redis, lapsed.id)
    refused = shop.place("refused+refuse@x.io")
    assert confirm_and_pay(session, redis, refused.id).outcome == "refused"
    unfinished = shop.place("unfinished+down@x.io")
    accept_confirmation(session, unfinished.id)
    reconcile_payment(session, redis, unfinished.id, FakeGateway(db.engine, fault="down"), PAST_FINAL)
    reconcile_payment(session, redis, unfinished.id, FakeGateway(db.engine), PAST_FINAL)  # voided, released
    paid = shop.place("paid@x.io")
    confirm_and_pay(session, redis, paid.id)
    assert shop.statuses([released.id, lapsed.id, refused.id, unfinished.id, paid.id]) == {
        released.id: "RELEASED", lapsed.id: "EXPIRED", refused.id: "RELEASED", unfinished.id: "RELEASED",
        paid.id: "CONFIRMED"}
    assert [(kind, hold_id) for kind, hold_id, _ in outbox(session)] == [("order.confirmed", paid.id)]


def test_the_confirmation_that_takes_the_last_unit_announces_the_sale_sold_out_once(session, redis, shop,
                                                                                    make_product):
    pid = make_product(total_stock=2, max_per_customer=1)
    first, second = shop.place("one@x.io"), shop.place("two@x.io")
    confirm_and_pay(session, redis, first.id)
    assert [kind for kind, _, _ in outbox(session)] == ["order.confirmed"]  # held is not sold
    confirm_and_pay(session, redis, second.id)
    events = outbox(session)
    assert [kind for kind, _, _ in events] == ["order.confirmed", "order.confirmed", "sale.sold_out"]
    assert events[2][2]["data"] == {"product_id": pid, "product_slug": "ps5"}


def test_a_refund_writes_order_refunded_once(session, redis, shop, make_product):
    make_product()
    held = shop.place("late+down@x.io")
    accept_confirmation(session, held.id)

    class UnvoidableGateway(FakeGateway):
        def void(self, key):
            return None  # a charge was already in flight

    take_payment(session, redis, held.id, FakeGateway(db.engine))
    reconcile_payment(session, redis, held.id, UnvoidableGateway(db.engine), PAST_FINAL)
    hold_id = held.id  # read before the commit expires it
    session.commit()  # the gateway is called outside any transaction: on SQLite one holds the only write lock
    late = FakeGateway(db.engine)._store(payment_key(hold_id), "captured", 49999, hold_id)
    assert settle(session, redis, hold_id, late, FakeGateway(db.engine)).outcome == "refunded"
    payments.refund(session, hold_id, late, FakeGateway(db.engine))  # a second refund records nothing new
    [(kind, refunded, body)] = outbox(session)
    assert (kind, refunded) == ("order.refunded", hold_id)
    assert body["data"]["payment_reference"] == late.id and body["data"]["status"] == "RELEASED"


def test_a_confirmation_that_fails_before_its_commit_leaves_no_event(session, redis, shop, make_product,
                                                                     monkeypatch):
    make_product()
    held = shop.place()
    accept_confirmation(session, held.id)

    def crash(*args):
        raise RuntimeError("the worker died between the event and the commit")

    monkeypatch.setattr(payments, "_confirmation_latency", crash)
    with pytest.raises(RuntimeError):
        take_payment(session, redis, held.id, FakeGateway(db.engine))
    session.rollback()
    assert shop.status(held.id) == "CONFIRMING" and outbox(session) == []
    monkeypatch.undo()
    assert reconcile_payment(session, redis, held.id, FakeGateway(db.engine),
                             PaymentPolicy(timeout_seconds=0)).status == "CONFIRMED"
    assert [kind for kind, _, _ in outbox(session)] == ["order.confirmed"]


def breaches_of(session, redis):
    return [str(b) for b in audit(session, FakeGateway(db.engine), final_seconds=900)]


def test_the_audit_finds_a_confirmed_hold_the_shop_was_never_told_of(session, redis, shop, make_product):
    make_product(total_stock=5)
    told, untold = shop.place("told@x.io").id, shop.place("untold@x.io").id
    confirm_and_pay(session, redis, told)
    confirm_and_pay(session, redis, untold)
    assert breaches_of(session, redis) == []
    session.execute(delete(WebhookEvent).where(WebhookEvent.hold_id == untold))
    session.commit()
    assert breaches_of(session, redis) == [
        f"[12 the shop hears of every order] {untold}: CONFIRMED with 0 order.confirmed events"]


def test_the_audit_finds_an_announced_hold_that_was_not_confirmed(session, redis, shop, make_product):
    make_product(total_stock=5)
    released = shop.place("released@x.io").id
    holds.release_hold(session, redis, released)
    order_confirmed(session, released)  # a bug that announced it (staged)
    session.commit()
    assert breaches_of(session, redis) == [
        f"[12 the shop hears of every order] {released}: RELEASED but announced as order.confirmed"]
