"""expire_hold and sweep_expired_holds record what the clock decided, once."""

from sqlalchemy import select

from flashsale.inventory import expiry
from flashsale.inventory.audit import audit
from flashsale.inventory.stock import stock_levels
from flashsale.models import InventoryEvent, Order
from tests.paying import confirm_and_pay


def test_expired_hold_no_longer_counts_against_stock_before_any_job(session, shop, make_product):
    pid = make_product(total_stock=2)
    hold = shop.place()
    assert stock_levels(session)[pid].available == 1
    shop.lapse(hold.id)
    assert stock_levels(session)[pid].available == 2
    assert session.get(Order, hold.id).status == "PENDING"  # nothing recorded yet, yet stock is back


def test_expire_hold_records_once_and_only_after_expiry(session, redis, shop, make_product):
    make_product()
    hold = shop.place()
    assert expiry.expire_hold(session, redis, hold.id) is False  # still live
    shop.lapse(hold.id)
    assert expiry.expire_hold(session, redis, hold.id) is True
    assert expiry.expire_hold(session, redis, hold.id) is False
    types = session.execute(select(InventoryEvent.type)).scalars().all()
    assert sorted(types) == ["EXPIRED", "HOLD_CREATED"]
    assert audit(session) == []


def test_sweeper_records_every_lapsed_hold_in_batches(session, redis, shop, make_product):
    make_product(total_stock=20, max_per_customer=1)
    ids = [shop.place(f"b{i}@x.io").id for i in range(7)]
    shop.lapse(*ids[:5])
    assert expiry.sweep_expired_holds(session, redis, batch_size=2) == 5
    assert expiry.sweep_expired_holds(session, redis, batch_size=2) == 0
    assert [shop.status(i) for i in ids] == ["EXPIRED"] * 5 + ["PENDING"] * 2
    assert audit(session) == []


def test_a_confirmed_hold_is_never_expired(session, redis, shop, make_product):
    make_product()
    hold = shop.place()
    confirm_and_pay(session, redis, hold.id)
    shop.lapse(hold.id)
    assert expiry.sweep_expired_holds(session, redis) == 0
    assert shop.status(hold.id) == "CONFIRMED"
