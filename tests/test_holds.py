"""place_hold and release_hold: the domain verbs, called directly (paying: tests/test_payments.py)."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from flashsale.errors import (
    HoldConfirmed,
    IdempotencyMismatch,
    InvalidInput,
    LimitExceeded,
    NotFound,
    SaleNotOpen,
    SoldOut,
)
from flashsale.extensions import db
from flashsale.inventory import holds, soldout
from flashsale.inventory.audit import audit
from flashsale.inventory.stock import stock_levels
from flashsale.models import InventoryEvent, Order
from tests.paying import confirm_and_pay


def count(session, model):
    return session.execute(select(func.count()).select_from(model)).scalar_one()


def test_placing_a_hold_writes_the_order_and_its_event_together(session, redis, make_product, policy):
    pid = make_product(total_stock=5)
    placed = holds.place_hold(session, redis, "ps5", " Ann@Example.COM ", 1, policy)
    assert placed.created and placed.hold.status == "PENDING"
    assert placed.hold.customer_email == "ann@example.com"
    assert (placed.hold.hold_expires_at - placed.hold.created_at) == timedelta(seconds=120)
    events = session.execute(select(InventoryEvent)).scalars().all()
    assert [(e.type, e.delta, e.order_id) for e in events] == [("HOLD_CREATED", -1, placed.hold.id)]
    assert stock_levels(session)[pid].available == 4


def test_hold_ids_are_unguessable_tokens(session, redis, make_product, policy):
    make_product(total_stock=5, max_per_customer=5)
    ids = {holds.place_hold(session, redis, "ps5", f"b{i}@x.io", 1, policy).hold.id for i in range(3)}
    assert len(ids) == 3 and all(len(i) >= 24 and not i.isdigit() for i in ids)


def test_sold_out_is_refused_and_changes_nothing(session, redis, make_product, policy):
    make_product(total_stock=1)
    holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy)
    with pytest.raises(SoldOut):
        holds.place_hold(session, redis, "ps5", "b@x.io", 1, policy)
    assert count(session, Order) == 1 and count(session, InventoryEvent) == 1


def test_a_sell_out_marks_the_product_so_the_herd_is_refused_at_redis_speed(session, redis, make_product, policy):
    pid = make_product(total_stock=1)
    holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy)
    assert soldout.is_marked(redis, pid)
    ttl = redis.pttl(f"fs:{{product:{pid}}}:sold_out")
    assert 0 < ttl <= soldout.MAX_MARK_MS


def test_releasing_stock_clears_the_sold_out_mark(session, redis, make_product, policy):
    pid = make_product(total_stock=1)
    hold = holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy).hold
    holds.release_hold(session, redis, hold.id)
    assert not soldout.is_marked(redis, pid)
    assert holds.place_hold(session, redis, "ps5", "b@x.io", 1, policy).created


def test_a_stale_generation_never_writes_the_sold_out_mark(redis, ctx):
    generation = soldout.generation(redis, 7)
    soldout.stock_returned(redis, [7])  # stock came back after we read the generation
    assert soldout.mark(redis, 7, generation, 5000) is False
    assert not soldout.is_marked(redis, 7)


def test_quantity_larger_than_what_is_left_is_sold_out(session, redis, make_product, policy):
    make_product(total_stock=3, max_per_customer=5)
    holds.place_hold(session, redis, "ps5", "a@x.io", 2, policy)
    with pytest.raises(SoldOut):
        holds.place_hold(session, redis, "ps5", "b@x.io", 2, policy)
    assert holds.place_hold(session, redis, "ps5", "b@x.io", 1, policy).created


def test_per_customer_limit_counts_held_and_confirmed_units(session, redis, make_product, policy):
    make_product(total_stock=10, max_per_customer=2)
    holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy)
    holds.place_hold(session, redis, "ps5", "A@x.io", 1, policy)
    with pytest.raises(LimitExceeded):
        holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy)
    with pytest.raises(LimitExceeded):
        holds.place_hold(session, redis, "ps5", "b@x.io", 3, policy)


def test_an_expired_hold_frees_the_customer_limit_and_the_stock(session, redis, shop, make_product, policy):
    pid = make_product(total_stock=1)
    hold = shop.place()
    soldout.stock_returned(redis, [pid])  # as if the mark's TTL ran out with the hold
    shop.lapse(hold.id)
    assert stock_levels(session)[pid].available == 1
    assert holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy).created


@pytest.mark.parametrize("starts_in, duration", [(timedelta(minutes=5), timedelta(hours=1)),
                                                  (timedelta(hours=-2), timedelta(hours=1))])
def test_closed_sales_refuse_holds(session, redis, make_product, policy, starts_in, duration):
    make_product(starts_in=starts_in, duration=duration)
    with pytest.raises(SaleNotOpen):
        holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy)
    assert count(session, Order) == 0


@pytest.mark.parametrize("email, quantity, field", [
    ("", 1, "email"), ("not-an-email", 1, "email"), ("a@x.io", 0, "quantity"),
    ("a@x.io", "1", "quantity"), ("a@x.io", True, "quantity"), ("a@x.io", 11, "quantity"),
    (None, None, "email"),
])
def test_invalid_requests_name_the_field(session, redis, make_product, policy, email, quantity, field):
    make_product()
    with pytest.raises(InvalidInput) as raised:
        holds.place_hold(session, redis, "ps5", email, quantity, policy)
    assert field in raised.value.fields


@pytest.mark.parametrize("ref", ["nope", "999", "99999999999999999999", "../etc", "PS5"])
def test_unknown_products_are_not_found(session, redis, make_product, policy, ref):
    make_product()
    with pytest.raises(NotFound):
        holds.place_hold(session, redis, ref, "a@x.io", 1, policy)


def test_an_idempotent_replay_returns_the_same_hold(session, redis, make_product, policy):
    make_product(total_stock=1)
    first = holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy, idempotency_key="k-1")
    again = holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy, idempotency_key="k-1")
    assert first.created and not again.created and again.hold.id == first.hold.id
    with pytest.raises(IdempotencyMismatch):
        holds.place_hold(session, redis, "ps5", "b@x.io", 1, policy, idempotency_key="k-1")
    assert count(session, Order) == 1


def test_release_returns_stock_at_once_and_is_idempotent(session, redis, make_product, policy):
    pid = make_product(total_stock=1)
    hold = holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy).hold
    assert holds.release_hold(session, redis, hold.id).status == "RELEASED"
    assert holds.release_hold(session, redis, hold.id).status == "RELEASED"
    assert stock_levels(session)[pid].available == 1
    assert audit(session) == []


def test_a_confirmed_hold_cannot_be_released(session, redis, make_product, policy):
    make_product()
    hold = holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy).hold
    confirm_and_pay(session, redis, hold.id)
    with pytest.raises(HoldConfirmed):
        holds.release_hold(session, redis, hold.id)


def test_unknown_holds_are_not_found(session, ctx):
    for hold_id in ["x", "A" * 24, "../../etc/passwd", "1 OR 1=1"]:
        with pytest.raises(NotFound):
            holds.get_hold(session, hold_id)


def test_the_fast_sold_out_path_takes_neither_the_lock_nor_the_database(session, redis, make_product, policy,
                                                                         monkeypatch):
    from sqlalchemy import event

    from flashsale.inventory import locks

    make_product(total_stock=1)
    holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy)  # sells out and warms the sale cache
    statements = []
    engine = session.get_bind()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    monkeypatch.setattr(locks.ProductLock, "acquire", lambda self: pytest.fail("took the lock"))
    try:
        with pytest.raises(SoldOut) as refused:
            holds.place_hold(session, redis, "ps5", "b@x.io", 1, policy)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert refused.value.details == {"fast": True}
    assert statements == []


def test_a_database_that_refuses_a_new_connection_is_a_503_not_a_500(app, client, make_product, monkeypatch):
    """PostgreSQL out of connection slots ("too many clients") when a batch checks a connection out:
    the pool raises the driver's own error, which must still read as an outage; nothing is written."""
    make_product(total_stock=5)
    assert client.post("/api/products/ps5/holds", json={"email": "ann@x.io"}).status_code == 201  # product cached
    with app.app_context():
        engine = db.engine
        engine.dispose()  # no pooled connection left: the next checkout must connect anew
        refused = engine.dialect.loaded_dbapi.OperationalError("FATAL:  sorry, too many clients already")

        def no_slot(*args, **kwargs):
            raise refused

        monkeypatch.setattr(engine.dialect, "connect", no_slot)
    answer = client.post("/api/products/ps5/holds", json={"email": "bob@x.io"})
    monkeypatch.undo()
    assert answer.status_code == 503 and answer.json["error"]["code"] == "unavailable"
    assert answer.headers["Retry-After"]
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Order)).scalar_one() == 1
