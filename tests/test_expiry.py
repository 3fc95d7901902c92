"""expire_hold and sweep_expired_holds record what the clock decided, once."""

from sqlalchemy import select

from flashsale.inventory import expiry, holds
from flashsale.inventory.audit import audit
from flashsale.inventory.stock import stock_levels
from flashsale.models import InventoryEvent, Order
from tests.test_holds import lapse


def test_expired_hold_no_longer_counts_against_stock_before_any_job(session, redis, make_product, policy):
    pid = make_product(total_stock=2)
    hold = holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy).hold
    assert stock_levels(session)[pid].available == 1
    lapse(session, hold.id)
    assert stock_levels(session)[pid].available == 2
    assert session.get(Order, hold.id).status == "PENDING"  # nothing recorded yet, yet stock is back


def test_expire_hold_records_once_and_only_after_expiry(session, redis, make_product, policy):
    make_product()
    hold = holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy).hold
    assert expiry.expire_hold(session, redis, hold.id) is False  # still live
    lapse(session, hold.id)
    assert expiry.expire_hold(session, redis, hold.id) is True
    assert expiry.expire_hold(session, redis, hold.id) is False
    types = session.execute(select(InventoryEvent.type)).scalars().all()
    assert sorted(types) == ["EXPIRED", "HOLD_CREATED"]
    assert audit(session) == []


def test_sweeper_records_every_lapsed_hold_in_batches(session, redis, make_product, policy):
    make_product(total_stock=20, max_per_customer=1)
    ids = [holds.place_hold(session, redis, "ps5", f"b{i}@x.io", 1, policy).hold.id for i in range(7)]
    for hold_id in ids[:5]:
        lapse(session, hold_id)
    assert expiry.sweep_expired_holds(session, redis, batch_size=2) == 5
    assert expiry.sweep_expired_holds(session, redis, batch_size=2) == 0
    statuses = {o.id: o.status for o in session.execute(select(Order)).scalars()}
    assert [statuses[i] for i in ids] == ["EXPIRED"] * 5 + ["PENDING"] * 2
    assert audit(session) == []


def test_a_confirmed_hold_is_never_expired(session, redis, make_product, policy):
    from tests.paying import confirm_and_pay

    make_product()
    hold = holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy).hold
    confirm_and_pay(session, redis, hold.id)
    lapse(session, hold.id)
    assert expiry.sweep_expired_holds(session, redis) == 0
    assert session.get(Order, hold.id).status == "CONFIRMED"
