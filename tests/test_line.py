"""The line at a product's lock: batch decisions, one transaction per batch, leaving the line, counters."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
import redis as redis_lib
from sqlalchemy import func, select, update

from flashsale import keys
from flashsale.errors import IdempotencyMismatch, LimitExceeded, LockBusy, SaleNotOpen, SoldOut
from flashsale.inventory import batches, holds, placement, soldout
from flashsale.inventory.audit import audit
from flashsale.inventory.locks import ProductLock
from flashsale.inventory.placement import SaleNow
from flashsale.models import InventoryEvent, Order, Product
from tests.live_server import wait_until
from tests.paying import confirm_and_pay

# Pure tests of _decide pass this moment in explicitly. Anything that reaches a real clock (the
# database's, Redis TTLs, the process's) builds its times from the clock at run time instead.
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)  # fixed-date-ok: pure tests only


def sale(total=10, taken=0, limit=1, by_customer=None, used_keys=None, starts=None, ends=None):
    return SaleNow(NOW, total, limit, starts or NOW - timedelta(hours=1), ends or NOW + timedelta(hours=1),
                   taken, None, by_customer or {}, used_keys or {})


def request(n, email=None, quantity=1, key=None, digest=None, deadline=None, now=NOW):
    return batches.Request(f"t{n}", email or f"b{n}@x.io", quantity, key, digest,
                        deadline or now.timestamp() + 60, f"hold-{n}")


def decide(sale_now, requests):
    return batches._decide(sale_now, requests, NOW + timedelta(minutes=2))


def test_a_batch_sells_in_arrival_order_until_stock_runs_out():
    answers, accepted, available, refused_for_stock = decide(sale(total=3, taken=1),
                                                             [request(n) for n in range(4)])
    assert [type(answers[f"t{n}"]) for n in range(4)] == [batches.Created] * 2 + [SoldOut] * 2
    assert [hold[0] for hold in accepted] == ["hold-0", "hold-1"]
    assert available == 0 and refused_for_stock


def test_the_limit_counts_earlier_buyers_of_the_same_batch_and_the_database():
    requests = [request(0, "a@x.io"), request(1, "a@x.io"), request(2, "b@x.io")]
    answers, accepted, _, _ = decide(sale(limit=1, by_customer={"b@x.io": 1}), requests)
    assert isinstance(answers["t0"], batches.Created)
    assert isinstance(answers["t1"], LimitExceeded) and answers["t1"].details["holding"] == 1
    assert isinstance(answers["t2"], LimitExceeded)
    assert len(accepted) == 1


def test_one_key_twice_in_a_batch_makes_one_hold_and_a_different_body_is_refused():
    requests = [request(0, key="k", digest="d1"), request(1, key="k", digest="d1"),
                request(2, key="k", digest="d2")]
    answers, accepted, _, _ = decide(sale(limit=5), requests)
    assert isinstance(answers["t0"], batches.Created)
    assert answers["t1"] == batches.Replayed("hold-0")
    assert isinstance(answers["t2"], IdempotencyMismatch)
    assert len(accepted) == 1


def test_a_key_already_in_the_database_is_replayed_without_a_new_hold():
    answers, accepted, _, _ = decide(sale(used_keys={"k": ["old-hold", "d1"]}),
                                     [request(0, key="k", digest="d1")])
    assert answers["t0"] == batches.Replayed("old-hold") and accepted == []


def test_a_buyer_who_gave_up_waiting_is_not_sold_anything():
    answers, accepted, _, _ = decide(sale(), [request(0, deadline=NOW.timestamp() - 1), request(1)])
    assert isinstance(answers["t0"], LockBusy)
    assert [hold[0] for hold in accepted] == ["hold-1"]


def test_a_closed_sale_refuses_the_whole_batch():
    answers, accepted, _, _ = decide(sale(ends=NOW), [request(0), request(1)])
    assert all(isinstance(a, SaleNotOpen) for a in answers.values()) and accepted == []


@pytest.mark.parametrize("answer", [
    batches.Created("h1", NOW + timedelta(minutes=2), NOW),
    batches.Replayed("h2"),
    SoldOut(available=0),
    LimitExceeded(limit=1, holding=1),
    SaleNotOpen("This sale has ended.", ended_at=NOW.isoformat()),
])
def test_an_answer_survives_the_trip_through_redis(answer):
    back = batches.decode_answer(batches.encode_answer(answer))
    if isinstance(answer, Exception):
        assert type(back) is type(answer) and back.details == answer.details
        assert back.message == answer.message
    else:
        assert back == answer


def test_one_transaction_serves_a_batch_and_marks_the_product_sold_out(
        session, redis, make_product, policy):
    pid = make_product(total_stock=3, max_per_customer=2)
    now = datetime.now(timezone.utc)  # batches.serve judges deadlines by the database clock
    requests = [request(0, "a@x.io", now=now), request(1, "a@x.io", now=now),
                request(2, "a@x.io", now=now), request(3, now=now)]
    answers = batches.serve(session, redis, pid, requests, 120, "0")
    assert [type(answers[f"t{n}"]) for n in range(4)] == [batches.Created, batches.Created, LimitExceeded,
                                                          batches.Created]
    rows = session.execute(select(Order.id, Order.hold_expires_at, Order.created_at)).all()
    assert {hold_id for hold_id, _, _ in rows} == {"hold-0", "hold-1", "hold-3"}
    assert {expires - created for _, expires, created in rows} == {timedelta(seconds=120)}
    events = session.execute(select(InventoryEvent.order_id, InventoryEvent.delta)).all()
    assert sorted(events) == [("hold-0", -1), ("hold-1", -1), ("hold-3", -1)]
    assert soldout.is_marked(redis, pid)
    assert audit(session) == []


def test_the_batch_transaction_is_picked_by_the_backend(session):
    expected = (placement.BatchTransaction if session.get_bind().dialect.name == "postgresql"
                else placement.SQLiteBatchTransaction)
    assert type(placement.batch_transaction(session.get_bind())) is expected


def wait_out_the_line(redis, product_id, wait_ms):
    """A buyer queued behind a holder that never lets go, until its deadline (LockBusy): its lock."""
    holder = ProductLock(redis, product_id, ttl_ms=5000, wait_ms=0).acquire()
    try:
        waiter = ProductLock(redis, product_id, ttl_ms=5000, wait_ms=wait_ms, queue_entry="entry",
                             reply_key=keys.batch_reply(product_id, "t"), batch=50)
        with pytest.raises(LockBusy):
            waiter.acquire()
        return waiter
    finally:
        holder.release()


def test_a_buyer_still_in_line_at_its_deadline_leaves_it_and_gets_503(redis, ctx):
    waiter = wait_out_the_line(redis, 5, wait_ms=100)
    assert waiter.joined
    assert redis.lrange(keys.batch_queue(5), 0, -1) == []


def test_a_queued_buyer_waits_for_its_answer_without_polling_the_held_lock(redis, ctx, monkeypatch):
    """Queued behind a holder for a second, a buyer looks at the lock a few times (for a holder that died),
    not every 50 ms; and no wait comes near the socket's timeout, where a slow reply would read as an outage."""
    attempts, blocks = [], []
    original_try, original_blpop = ProductLock.try_acquire, redis.blpop
    monkeypatch.setattr(ProductLock, "try_acquire", lambda self: attempts.append(1) or original_try(self))
    monkeypatch.setattr(redis, "blpop", lambda keys_, timeout: blocks.append(timeout) or original_blpop(keys_, timeout))
    wait_out_the_line(redis, 7, wait_ms=1000)
    assert len(attempts) <= 1 + 1000 / 125  # blocks of at least 125 ms; polling every 50 ms made 20
    timeout = redis.connection_pool.connection_kwargs["socket_timeout"]
    assert blocks and max(blocks) <= min(0.375, timeout / 2)


def test_a_buyer_whose_request_a_holder_took_waits_for_the_answer_past_its_deadline(redis, ctx):
    holder = ProductLock(redis, 6, ttl_ms=5000, wait_ms=0).acquire()
    try:
        waiter = ProductLock(redis, 6, ttl_ms=2000, wait_ms=50, queue_entry="entry",
                             reply_key=keys.batch_reply(6, "t"), batch=50)
        assert waiter.try_acquire() is False  # in line, lock busy
        assert redis.lpop(keys.batch_queue(6)) == b"entry"  # a holder takes the request...
        batches.answer(redis, 6, {"t": batches.Replayed("h")})  # ...and answers it
        wait_until(waiter.past_deadline, 1, interval=0.005, message="the waiter's deadline")  # before it looks again
        waiter.acquire()
        assert batches.decode_answer(waiter.reply) == batches.Replayed("h") and not waiter.held
    finally:
        holder.release()


def test_an_answer_slower_than_the_socket_timeout_but_within_the_ttl_is_heard(redis, ctx):
    """Past its deadline a buyer whose request a holder took waits up to ttl_ms for the answer, in blocks
    shorter than the socket's timeout: one long block read a slow holder as Redis gone (TimeoutError)."""
    pool = redis.connection_pool
    short = redis_lib.Redis(connection_pool=type(pool)(connection_class=pool.connection_class,
                                                       **{**pool.connection_kwargs, "socket_timeout": 0.3}))
    holder = ProductLock(redis, 8, ttl_ms=5000, wait_ms=0).acquire()
    try:
        waiter = ProductLock(short, 8, ttl_ms=2000, wait_ms=50, queue_entry="entry",
                             reply_key=keys.batch_reply(8, "t"), batch=50)
        assert waiter.try_acquire() is False
        assert redis.lpop(keys.batch_queue(8)) == b"entry"  # a holder takes the request, answers in 0.6 s
        slow_holder = threading.Timer(0.6, batches.answer, (redis, 8, {"t": batches.Replayed("h")}))
        slow_holder.start()
        waiter.acquire()
        slow_holder.join()
        assert batches.decode_answer(waiter.reply) == batches.Replayed("h") and not waiter.unanswered
    finally:
        holder.release()
        short.close()


def test_confirming_moves_the_confirmed_units_counter_and_the_audit_checks_it(
        session, redis, make_product, policy):
    pid = make_product(total_stock=5, max_per_customer=3)
    held = holds.place_hold(session, redis, "ps5", "a@x.io", 2, policy).hold
    confirm_and_pay(session, redis, held.id)
    assert session.get(Product, pid, populate_existing=True).confirmed_units == 2
    assert audit(session) == []
    session.execute(update(Product).values(confirmed_units=Product.confirmed_units + 1))
    session.commit()
    assert any("confirmed_units" in breach.detail for breach in audit(session))


def test_confirmed_units_count_against_stock_without_summing_history(
        session, redis, make_product, policy):
    make_product(total_stock=2, max_per_customer=1)
    first = holds.place_hold(session, redis, "ps5", "a@x.io", 1, policy).hold
    confirm_and_pay(session, redis, first.id)
    assert holds.place_hold(session, redis, "ps5", "b@x.io", 1, policy).created
    with pytest.raises(SoldOut):
        holds.place_hold(session, redis, "ps5", "c@x.io", 1, policy)
    assert session.execute(select(func.count()).select_from(Order)).scalar_one() == 2


def test_a_batch_calls_back_once_with_every_hold_it_committed(app, make_product):
    """Per-batch work (scheduling expiry) runs once for the whole batch, outside the lock."""
    import threading

    from flashsale.extensions import db, redis_store

    make_product(slug="batched", total_stock=20)
    policy = holds.HoldPolicy(lock_wait_ms=5000)
    calls, placed = [], []

    def buy(n):
        with app.app_context():
            placed.append(holds.place_hold(db.session, redis_store.client, "batched", f"b{n}@x.io", 1, policy,
                                           on_committed=lambda _pipe, ids, expires: calls.append((ids, expires))))
            db.session.remove()

    with app.app_context():
        redis = redis_store.client
        holder = ProductLock(redis, 1, ttl_ms=30_000, wait_ms=0).acquire()
        buyers = [threading.Thread(target=buy, args=(n,)) for n in range(10)]
        for buyer in buyers:
            buyer.start()
        wait_until(lambda: redis.llen(keys.batch_queue(1)) == 10, 10, message="ten buyers in line")
        holder.release()
        for buyer in buyers:
            buyer.join(10)
    assert len(placed) == 10 and len(calls) == 1
    ids, expires = calls[0]
    assert sorted(ids) == sorted(p.hold.id for p in placed)
    assert {p.hold.hold_expires_at for p in placed} == {expires}


def test_a_placed_hold_is_answered_without_reading_it_back(app, make_product):
    """The hold a buyer placed is put in the session as inserted: its answer costs no SELECT."""
    from sqlalchemy import event

    from flashsale.extensions import db, redis_store
    from flashsale.serialise import hold_json

    make_product(slug="attached", total_stock=5)
    with app.app_context():
        placed = holds.place_hold(db.session, redis_store.client, "attached", "a@x.io", 1, holds.HoldPolicy())
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            answer = hold_json(placed.hold)
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        db.session.remove()
    assert statements == []
    assert answer["status"] == "PENDING" and answer["confirmation_requested_at"] is None


def test_a_placed_hold_is_the_row_as_the_database_holds_it(app, make_product):
    """Built without its constructor, the answer's Order has every column as read back, and joins a
    session as that row: no INSERT or UPDATE when the session flushes."""
    from sqlalchemy import event, inspect

    from flashsale.extensions import db, redis_store
    from flashsale.models import Order

    make_product(slug="as-row", total_stock=5, max_per_customer=2)
    with app.app_context():
        placed = holds.place_hold(db.session, redis_store.client, "as-row", "r@x.io", 2, holds.HoldPolicy(),
                                  idempotency_key="k-as-row")
        built = {c.key: getattr(placed.hold, c.key) for c in inspect(Order).column_attrs}
        assert inspect(placed.hold).detached
        stored = db.session.get(Order, placed.hold.id, populate_existing=True)
        assert built == {c.key: getattr(stored, c.key) for c in inspect(Order).column_attrs}
        db.session.expunge(stored)
        statements = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            db.session.add(placed.hold)
            db.session.flush()
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        db.session.rollback()
        db.session.remove()
    assert not any(s.lstrip().upper().startswith(("INSERT", "UPDATE")) for s in statements)
