"""The audit catches each kind of breach it claims to (so a passing audit means something)."""

import subprocess

from sqlalchemy import delete, insert, update

from flashsale.inventory import holds
from flashsale.inventory.audit import audit
from flashsale.inventory.ledger import EVENTS, event_row
from flashsale.models import InventoryEvent, Order, Product
from flashsale.payments import FakeGateway
from tests.live_server import BIN, ROOT, server_env


def place(session, redis, policy, email="a@x.io", quantity=1):
    return holds.place_hold(session, redis, "ps5", email, quantity, policy).hold


def invariants(session):
    return {breach.invariant.split()[0] for breach in audit(session)}


def test_a_sound_sale_passes(session, redis, make_product, policy):
    make_product(total_stock=3)
    held = place(session, redis, policy)
    holds.confirm_hold(session, redis, held.id, FakeGateway())
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
    holds.confirm_hold(session, redis, held.id, FakeGateway())
    session.execute(insert(EVENTS).values(event_row("EXPIRED", held.id, 1, 1, held.created_at)))
    session.commit()
    assert {"3", "4"} <= invariants(session)


def test_a_confirmation_after_expiry_is_caught(session, redis, make_product, policy):
    make_product()
    held = place(session, redis, policy)
    holds.confirm_hold(session, redis, held.id, FakeGateway())
    session.execute(update(Order).values(confirmed_at=Order.hold_expires_at))
    session.commit()
    assert "3" in invariants(session)


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
