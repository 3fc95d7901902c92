"""The audit catches each kind of breach it claims to (so a passing audit means something)."""

import subprocess
from datetime import timedelta

from sqlalchemy import delete, func, insert, update

from flashsale import keys
from flashsale.gateways import FakeGateway
from flashsale.inventory import holds
from flashsale.inventory.audit import audit
from flashsale.inventory.confirmation import accept_confirmation, payment_key
from flashsale.inventory.ledger import EVENTS, event_row
from flashsale.inventory.payments import take_payment
from flashsale.models import InventoryEvent, Order, Payment, Product
from tests.live_server import BIN, ROOT, server_env
from tests.paying import confirm_and_pay


def place(session, redis, policy, email="a@x.io", quantity=1):
    return holds.place_hold(session, redis, "ps5", email, quantity, policy).hold


def invariants(session):
    return {breach.invariant.split()[0] for breach in audit(session)}


def test_a_sound_sale_passes(session, redis, make_product, policy):
    make_product(total_stock=3)
    held = place(session, redis, policy)
    confirm_and_pay(session, redis, held.id)
    place(session, redis, policy, "b@x.io")
    assert audit(session) == []


def test_oversell_is_caught(session, redis, make_product, policy):
    make_product(total_stock=2)
    place(session, redis, policy)
    place(session, redis, policy, "b@x.io")
    session.execute(update(Product).values(total_stock=1))
    session.commit()
    assert "1" in invariants(session)


def test_a_hold_without_its_event_is_caught(session, redis, make_product, policy):
    make_product()
    place(session, redis, policy)
    session.execute(delete(InventoryEvent))
    session.commit()
    assert {"8", "4"} <= invariants(session)


def test_two_outcomes_for_one_hold_are_caught(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    confirm_and_pay(session, redis, held.id)
    session.execute(insert(EVENTS).values(event_row("EXPIRED", held.id, 1, 1, held.created_at)))
    session.commit()
    assert {"3", "4"} <= invariants(session)


def test_a_confirmation_accepted_after_expiry_is_caught(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    confirm_and_pay(session, redis, held.id)
    session.execute(update(Order).values(confirmation_requested_at=Order.hold_expires_at))
    session.commit()
    assert "3" in invariants(session)


def test_a_confirmed_hold_paid_after_its_expiry_is_sound(session, redis, make_product, policy):
    """Accepted in time, the promise is kept however late the payment lands."""
    make_product()
    held = place(session, redis, policy)
    accept_confirmation(session, held.id)
    session.execute(update(Order).values(hold_expires_at=func.now() - timedelta(seconds=5),
                                         confirmation_requested_at=func.now() - timedelta(seconds=6)))
    session.commit()
    take_payment(session, redis, held.id, FakeGateway(redis))
    assert audit(session, FakeGateway(redis)) == []


# --- invariant 9: money follows the outcome ---------------------------------------------------------

def money_breaches(session, redis, final_seconds=None):
    return [str(b) for b in audit(session, FakeGateway(redis), final_seconds) if b.invariant.startswith("9")]


def test_a_confirmed_hold_without_a_captured_payment_is_caught(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    confirm_and_pay(session, redis, held.id)
    assert money_breaches(session, redis) == []
    session.execute(update(Payment).values(state="refused"))
    session.commit()
    assert any("CONFIRMED hold with payment refused" in b for b in money_breaches(session, redis))


def test_a_capture_for_a_hold_that_did_not_end_confirmed_is_caught(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    confirm_and_pay(session, redis, held.id)
    session.execute(update(Order).values(status="RELEASED"))  # as if the payment's outcome were lost
    session.commit()
    found = money_breaches(session, redis)
    assert any("refund owed" in b for b in found)
    assert any("the gateway holds a capture for a RELEASED hold" in b for b in found)


def test_a_hold_charged_twice_at_the_gateway_is_caught(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    confirm_and_pay(session, redis, held.id)
    FakeGateway(redis).charge("someone-elses-key", 49999, "a@x.io", held.id)  # a second charge for it
    assert any("charged 2 times" in b for b in money_breaches(session, redis))


def test_a_confirmed_hold_the_gateway_never_charged_is_caught(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    confirm_and_pay(session, redis, held.id)
    redis.delete(keys.fake_gateway_charge(payment_key(held.id)))
    assert any("the gateway holds no charge" in b for b in money_breaches(session, redis))


def test_a_payment_nobody_settled_past_the_final_deadline_is_caught(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    accept_confirmation(session, held.id)
    assert money_breaches(session, redis, final_seconds=900) == []
    session.execute(update(Order).values(confirmation_requested_at=func.now() - timedelta(hours=2)))
    session.commit()
    assert any("past the final deadline" in b for b in money_breaches(session, redis, final_seconds=900))


def test_a_confirming_hold_without_its_payment_is_caught(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    accept_confirmation(session, held.id)
    session.execute(delete(Payment))
    session.commit()
    assert any("CONFIRMING hold with payment missing" in b for b in money_breaches(session, redis))


def test_a_wrong_delta_is_caught(session, redis, make_product, policy):
    make_product()
    place(session, redis, policy)
    session.execute(update(InventoryEvent).values(delta=-2))
    session.commit()
    assert "4" in invariants(session)


def test_a_customer_over_the_limit_is_caught(session, redis, make_product, policy):
    make_product(max_per_customer=2)
    place(session, redis, policy, quantity=2)
    session.execute(update(Product).values(max_per_customer=1))
    session.commit()
    assert "6" in invariants(session)


def test_flask_audit_exits_non_zero_on_a_breach(app, session, redis, make_product, policy):
    make_product(total_stock=1)
    place(session, redis, policy)
    session.execute(update(Product).values(total_stock=0))
    session.commit()
    env = server_env(app.config["SQLALCHEMY_DATABASE_URI"], app.config["REDIS_URL"])
    result = subprocess.run([str(BIN / "flask"), "--app", "app", "audit"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "BREACH [1 no oversell] ps5" in result.stderr
