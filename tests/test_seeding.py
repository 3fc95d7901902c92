"""Scenarios in seeds/: `flask seed` creates what is missing and never changes what is there, `--reset`
starts a sale over (refusing paid orders unless told), windows are relative to now, and `--list` lists them."""

import shutil
import threading
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from sqlalchemy import func, inspect, select, text, update

from flashsale import keys
from flashsale.errors import SaleNotOpen, SoldOut
from flashsale.extensions import db, redis_store
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory import holds, seeding, soldout
from flashsale.inventory.audit import audit
from flashsale.inventory.confirmation import accept_confirmation, payment_key
from flashsale.inventory.payments import take_payment
from flashsale.inventory.seeding import (
    PaidOrdersExist,
    describe,
    load_scenario,
    parse_duration,
    reset,
    scenario_names,
    seed,
    window_text,
)
from flashsale.models import CONFIRMED, CONFIRMING, InventoryEvent, Order, Payment, Product
from tests.live_server import wait_until

# Seeded windows are compared with the database clock by some checks: build "now" at run time.
NOW = datetime.now(timezone.utc).replace(microsecond=0)
REQUIRED = {"ps5-drop", "multi-drop", "upcoming-sale", "ended-sale", "low-stock", "mega-sale", "ps5-queue"}


def snapshot(session):
    """Every product's seeded fields, by slug."""
    return {p.slug: (p.id, p.name, p.price_cents, p.total_stock, p.max_per_customer, p.sale_starts_at,
                     p.sale_ends_at)
            for p in session.execute(select(Product)).scalars()}


def count(session, model):
    return session.execute(select(func.count()).select_from(model)).scalar_one()


def test_every_required_scenario_is_there_and_loads():
    assert REQUIRED <= set(scenario_names())
    for name in scenario_names():
        scenario = load_scenario(name)
        assert scenario.description and scenario.products
        if scenario.crowd:
            slugs = {p["slug"] for p in scenario.products}
            assert scenario.crowd["product"] in slugs


def test_ps5_drop_is_the_contract_scenario(session, redis):
    seed(session, redis, load_scenario("ps5-drop"), now=NOW)
    _, _, _, stock, limit, starts, ends = snapshot(session)["ps5"]
    assert (stock, limit, starts, ends) == (100, 1, NOW, NOW + timedelta(hours=1))


def test_windows_are_relative_to_now(session, redis):
    for name in ("upcoming-sale", "ended-sale", "mega-sale"):
        seed(session, redis, load_scenario(name), now=NOW)
    products = snapshot(session)
    assert products["switch-2"][5:] == (NOW + timedelta(minutes=10), NOW + timedelta(minutes=130))
    assert products["steam-deck"][5:] == (NOW - timedelta(hours=3), NOW - timedelta(hours=1))
    assert products["mega-tee"][3:5] == (100_000, 5)
    assert products["mega-tee"][5:] == (NOW, NOW + timedelta(hours=2))


def test_an_upcoming_sale_refuses_holds_until_it_opens(session, redis, policy):
    seed(session, redis, load_scenario("upcoming-sale"))
    with pytest.raises(SaleNotOpen):
        holds.place_hold(session, redis, "switch-2", "eager@example.com", 1, policy)


def test_durations_read_seconds_minutes_hours_days_and_negatives():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("-2h") == timedelta(hours=-2)
    assert parse_duration(0) == timedelta(0)
    assert parse_duration("1.5d") == timedelta(hours=36)
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_windows_are_described_in_words():
    assert window_text("0s", "1h") == "live now for 1h"
    assert window_text("10m", "2h") == "opens in 10m for 2h"
    assert window_text("-3h", "2h") == "ended 1h ago"
    assert window_text("-30m", "1h") == "live for 30m more"


@pytest.mark.parametrize("extra", [[], ["--reset"], ["--reset", "--delete-paid-orders"]])
def test_an_unknown_scenario_names_the_known_ones(app, extra):
    for name in ("black-friday", "../config", "PS5-DROP"):
        result = app.test_cli_runner().invoke(args=["seed", name, *extra])
        assert result.exit_code != 0
        assert f"no scenario '{name}'" in result.output and "ps5-drop" in result.output
    with pytest.raises(LookupError):
        load_scenario("../config")


def test_the_flags_that_need_another_are_refused(app):
    alone = app.test_cli_runner().invoke(args=["seed", "ps5-drop", "--delete-paid-orders"])
    assert alone.exit_code == 2 and "--delete-paid-orders only goes with --reset" in alone.output
    nameless = app.test_cli_runner().invoke(args=["seed", "--reset"])
    assert nameless.exit_code == 2 and "--reset needs a SCENARIO" in nameless.output


def test_the_help_describes_both_forms(app):
    result = app.test_cli_runner().invoke(args=["seed", "--help"])
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert "Running it twice changes nothing" in help_text
    assert "--reset" in help_text and "Start the scenario's sale over" in help_text
    assert "--delete-paid-orders" in help_text


def test_the_list_describes_products_stock_windows_and_crowds(app):
    result = app.test_cli_runner().invoke(args=["seed", "--list"])
    assert result.exit_code == 0, result.output
    for name in REQUIRED:
        assert name in result.output
    assert "ps5: PlayStation 5, 100 units at 499.99 USD, 1 per customer, live now for 1h" in result.output
    assert "crowd: 5,000 buyers for ps5, burst" in result.output
    assert "opens in 10m for 2h" in result.output and "ended 1h ago" in result.output
    assert "100,000 units" in result.output
    assert describe(load_scenario("ps5-drop")) in result.output




# --- seeding twice, resetting --------------------------------------------------------------------------

def database_dump(session):
    """Every row of every table, all columns, in primary-key order.

    On PostgreSQL each row also carries its version's ctid and xmin: an UPDATE that writes the very same
    values still makes a new row version, and would show here.
    """
    session.rollback()  # on SQLite an open transaction holds the writer lock the inspector's connection needs
    engine = session.get_bind()
    inspector = inspect(engine)
    tables = {table: inspector.get_pk_constraint(table)["constrained_columns"]
              for table in inspector.get_table_names()}
    versions = "ctid::text, xmin::text, " if engine.dialect.name == "postgresql" else ""
    dump = {}
    for table, key in tables.items():
        order = ", ".join(f'"{column}"' for column in key) or "1"
        dump[table] = session.execute(text(f'SELECT {versions}* FROM "{table}" ORDER BY {order}')).all()
    session.rollback()
    return dump


def redis_dump(redis, pattern="*"):
    """Every Redis key matching pattern: its serialised value and whether it has a TTL."""
    return {key: (redis.dump(key), redis.pttl(key) >= 0) for key in sorted(redis.scan_iter(match=pattern))}


def without_product(dump, product_id):
    """A database dump without one product's rows: its own, its orders', its ledger's, its payments'."""
    theirs = {row.id for row in dump["orders"] if row.product_id == product_id}
    return {table: [row for row in rows
                    if not (table == "products" and row.id == product_id
                            or table in ("orders", "inventory_events") and row.product_id == product_id
                            or table == "payments" and row.order_id in theirs)]
            for table, rows in dump.items()}


def product_id(session, slug):
    found = session.execute(select(Product.id).where(Product.slug == slug)).scalar_one()
    session.rollback()
    return found


def pay(session, redis, hold_id, status):
    """Confirm a hold as the shop does: CONFIRMING (accepted, payment under way) or CONFIRMED (paid)."""
    accept_confirmation(session, hold_id)
    if status == CONFIRMED:
        assert take_payment(session, redis, hold_id, FakeGateway(db.engine)).status == CONFIRMED
    return payment_key(hold_id)


def buy(session, redis, policy, slug, email, quantity=1):
    hold_id = holds.place_hold(session, redis, slug, email, quantity, policy).hold.id
    session.rollback()  # reading the id began a transaction: end it, as a request would
    return hold_id


def a_sale_in_progress(session, redis, policy):
    """Four scenarios seeded; ps5 and gold-edition with holds of every kind, payments, marks and a line."""
    for name in ("ps5-drop", "low-stock", "multi-drop", "ended-sale"):
        seed(session, redis, load_scenario(name), now=NOW)
    ps5 = [buy(session, redis, policy, "ps5", f"ps5-{n}@example.com") for n in range(5)]
    keys_ = [pay(session, redis, ps5[0], CONFIRMED), pay(session, redis, ps5[1], CONFIRMED),
             pay(session, redis, ps5[2], CONFIRMING)]
    holds.release_hold(session, redis, ps5[3])
    gold = [buy(session, redis, policy, "gold-edition", f"gold-{n}@example.com") for n in range(3)]
    pay(session, redis, gold[0], CONFIRMED)
    with pytest.raises(SoldOut):  # the fourth buyer finds it sold out, which marks it
        buy(session, redis, policy, "gold-edition", "late@example.com")
    assert soldout.is_marked(redis, product_id(session, "gold-edition"))
    ps5_id = product_id(session, "ps5")
    redis.set(keys.sold_out(ps5_id), "1")
    redis.rpush(keys.batch_queue(ps5_id), "a buyer waiting in line")
    redis.lpush(keys.batch_reply(ps5_id, "ticket-1"), "an answer nobody picked up")
    redis.set(keys.lock(ps5_id), "a live holder's token")
    redis.lpush(keys.lock_wake(ps5_id), "1")
    for key in redis.scan_iter():
        redis.persist(key)  # nothing may lapse between two dumps and pass for a change
    return ps5, keys_


def test_seeding_twice_changes_not_one_byte(app, session, redis, policy):
    a_sale_in_progress(session, redis, policy)
    before, marks = database_dump(session), redis_dump(redis)
    assert len(before["orders"]) == 8 and len(before["payments"]) == 4
    assert any(b"sold_out" in key for key in marks) and any(b"stock_gen" in key for key in marks)

    for name in ("ps5-drop", "low-stock", "multi-drop", "ended-sale"):
        result = app.test_cli_runner().invoke(args=["seed", name])
        assert result.exit_code == 0, result.output
        assert "created" not in result.output and "differs" not in result.output
        assert result.output.count("already there, left as is") == len(load_scenario(name).products)
    assert database_dump(session) == before
    assert redis_dump(redis) == marks
    seed(session, redis, load_scenario("ps5-drop"))  # later, by the domain call itself
    assert database_dump(session) == before and redis_dump(redis) == marks


def test_the_second_seed_says_left_as_is(app, session, redis):
    first = app.test_cli_runner().invoke(args=["seed", "low-stock"])
    assert first.exit_code == 0, first.output
    assert first.output.startswith("gold-edition: created, 3 units, on sale ")
    second = app.test_cli_runner().invoke(args=["seed", "low-stock"])
    assert second.exit_code == 0, second.output
    assert second.output.startswith("gold-edition: already there, left as is (3 units, on sale ")
    assert snapshot(session)["gold-edition"][3] == 3


def test_seed_creates_only_what_is_missing(session, redis, make_product):
    make_product(slug="dualsense", total_stock=7)
    done = seed(session, redis, load_scenario("multi-drop"), now=NOW)
    assert [(p.slug, p.created) for p in done] == [("xbox-series-x", True), ("dualsense", False),
                                                  ("pulse-headset", True)]
    products = snapshot(session)
    assert products["dualsense"][3] == 7  # left as it was, differences and all
    assert products["xbox-series-x"][3:] == (50, 1, NOW, NOW + timedelta(hours=1))
    assert {d.field for d in done[1].differences} == {"name", "description", "price_cents", "total_stock",
                                                      "max_per_customer"}


def edited_scenario(tmp_path, monkeypatch, name, **changes):
    """A copy of seeds/ where one scenario's first product has other values, as if edited by hand."""
    shutil.copytree(seeding.SEEDS_DIR, tmp_path / "seeds")
    path = tmp_path / "seeds" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data["products"][0].update(changes)
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(seeding, "SEEDS_DIR", tmp_path / "seeds")


def test_a_product_edited_in_the_file_is_reported_not_applied(app, session, redis, policy, tmp_path,
                                                              monkeypatch):
    seed(session, redis, load_scenario("ps5-drop"), now=NOW)
    buy(session, redis, policy, "ps5", "ann@example.com")
    before = database_dump(session)
    edited_scenario(tmp_path, monkeypatch, "ps5-drop", total_stock=150, price_cents=39999, duration="2h")

    result = app.test_cli_runner().invoke(args=["seed", "ps5-drop"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("ps5: already there, left as is (100 units")
    assert lines[1:4] == [
        "  differs from seeds/ps5-drop.yaml: price_cents 49999 in the database, 39999 in the file",
        "  differs from seeds/ps5-drop.yaml: total_stock 100 in the database, 150 in the file",
        "  differs from seeds/ps5-drop.yaml: duration '1h' in the database, '2h' in the file",
    ]
    assert "not applied: `flask seed ps5-drop --reset` applies the file" in lines[4]
    assert database_dump(session) == before

    applied = app.test_cli_runner().invoke(args=["seed", "ps5-drop", "--reset"])
    assert applied.exit_code == 0, applied.output
    assert "ps5: started over, 150 units" in applied.output and "deleted 1 holds (0 paid)" in applied.output
    _, _, price, stock, _, starts, ends = snapshot(session)["ps5"]
    assert (price, stock, ends - starts) == (39999, 150, timedelta(hours=2))
    assert seed(session, redis, load_scenario("ps5-drop"))[0].differences == ()


def test_reset_starts_the_sale_over_and_drops_only_that_scenarios_rows(session, redis, policy):
    ps5_holds, payment_keys = a_sale_in_progress(session, redis, policy)
    ps5 = product_id(session, "ps5")
    others = without_product(database_dump(session), ps5)
    other_marks = {key: value for key, value in redis_dump(redis).items() if f"product:{ps5}}}".encode() not in key}
    generation = int(soldout.generation(redis, ps5))
    later = datetime.now(timezone.utc)  # NOW, the first seeding, is whole seconds: this is not

    report = reset(session, redis, load_scenario("ps5-drop"), now=later, delete_paid=True)

    (done,) = report.products
    assert (done.product.slug, done.product.created) == ("ps5", False)
    # Events: 5 created, 3 accepted, 2 confirmed, 1 released.
    assert (done.holds, done.paid, done.payments, done.events) == (5, 3, 3, 5 + 3 + 2 + 1)
    assert sorted(report.payment_keys) == sorted(payment_keys) and report.redis_error is None
    assert count(session, Order) == 3 and count(session, Payment) == 1  # gold-edition's
    assert session.execute(select(func.count()).select_from(InventoryEvent)
                           .where(InventoryEvent.product_id == ps5)).scalar_one() == 0
    product = session.get(Product, ps5)
    assert (product.confirmed_units, product.sale_starts_at, product.sale_ends_at) == (
        0, later, later + timedelta(hours=1)) and later != NOW
    session.rollback()
    # Every other product's rows are exactly as they were, the ps5 row only changed where reset says.
    assert without_product(database_dump(session), ps5) == others
    # Redis: the mark, line and reply are gone, the generation moved on, the live holder keeps its lock.
    assert done.redis_keys == 3
    assert not soldout.is_marked(redis, ps5) and not redis.exists(keys.batch_queue(ps5))
    assert not redis.exists(keys.batch_reply(ps5, "ticket-1"))
    assert int(soldout.generation(redis, ps5)) == generation + 1
    assert redis.get(keys.lock(ps5)) == b"a live holder's token" and redis.exists(keys.lock_wake(ps5))
    assert {key: value for key, value in redis_dump(redis).items()
            if f"product:{ps5}}}".encode() not in key} == other_marks
    assert audit(session) == []
    redis.delete(keys.lock(ps5))  # the holder finishes; then the sale takes buyers again, the same ones too
    holds.place_hold(session, redis, "ps5", "ps5-0@example.com", 1, policy)


def test_reset_refuses_paid_orders_unless_told(app, session, redis, policy):
    seed(session, redis, load_scenario("ps5-drop"), now=NOW)
    seed(session, redis, load_scenario("low-stock"), now=NOW)
    ps5 = [buy(session, redis, policy, "ps5", f"b{n}@example.com") for n in range(3)]
    pay(session, redis, ps5[0], CONFIRMING)  # a payment under way is money that may be moving
    before = database_dump(session)

    with pytest.raises(PaidOrdersExist) as refusal:
        reset(session, redis, load_scenario("ps5-drop"))
    assert refusal.value.paid == {"ps5": {CONFIRMING: 1}}
    assert database_dump(session) == before

    pay(session, redis, ps5[1], CONFIRMED)
    before = database_dump(session)
    result = app.test_cli_runner().invoke(args=["seed", "ps5-drop", "--reset"])
    assert result.exit_code == 1
    assert "refusing to reset ps5-drop: it has paid orders (ps5: 1 CONFIRMED, 1 CONFIRMING)" in result.output
    assert "Nothing was deleted. Add --delete-paid-orders" in result.output
    assert database_dump(session) == before

    gateway = FakeGateway(db.engine)
    told = app.test_cli_runner().invoke(args=["seed", "ps5-drop", "--reset", "--delete-paid-orders"])
    assert told.exit_code == 0, told.output
    assert "ps5: started over, 100 units" in told.output
    assert "deleted 3 holds (2 paid), 2 payments, 6 ledger events, 0 Redis keys" in told.output
    # The demo's fake gateway forgets those charges with them (a real one keeps its own records).
    assert "the fake gateway forgot the 2 charges of the deleted payments" in told.output
    assert gateway.find(payment_key(ps5[1])) is None and gateway.charges() == []
    assert audit(session, gateway) == []
    assert count(session, Order) == 0 and snapshot(session)["gold-edition"][3] == 3


def test_reset_without_paid_orders_needs_no_second_flag(app, session, redis, policy):
    seed(session, redis, load_scenario("ps5-drop"))
    holds.release_hold(session, redis, buy(session, redis, policy, "ps5", "gone@example.com"))
    buy(session, redis, policy, "ps5", "held@example.com")
    result = app.test_cli_runner().invoke(args=["seed", "ps5-drop", "--reset"])
    assert result.exit_code == 0, result.output
    assert "deleted 2 holds (0 paid), 0 payments, 3 ledger events" in result.output
    assert "payment idempotency keys" not in result.output
    assert count(session, Order) == 0 and audit(session) == []


def test_reset_creates_what_is_missing(app, session):
    result = app.test_cli_runner().invoke(args=["seed", "multi-drop", "--reset"])
    assert result.exit_code == 0, result.output
    assert [line.split(",")[0] for line in result.output.splitlines()] == [
        "xbox-series-x: created", "dualsense: created", "pulse-headset: created"]
    assert set(snapshot(session)) == {"xbox-series-x", "dualsense", "pulse-headset"}


def blocked_on_a_row_lock(session):
    """Whether some backend is waiting for a row lock to take its own (the reset's SELECT ... FOR UPDATE)."""
    waiting = session.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                   "AND query LIKE '%FOR UPDATE%'")).scalar_one()
    session.rollback()
    return waiting > 0


@pytest.mark.postgres("watches the reset wait for a hold's row lock in pg_stat_activity; SQLite has no row locks")
def test_a_confirmation_accepted_while_the_reset_waits_is_refused_not_deleted(app, session, redis, policy):
    seed(session, redis, load_scenario("ps5-drop"))
    hold = buy(session, redis, policy, "ps5", "ann@example.com")
    confirming = db.engine.connect()  # a shopper's confirmation, accepted but not yet committed
    confirming.execute(update(Order).where(Order.id == hold).values(status=CONFIRMING))
    outcome = []

    def reset_in_another_thread():
        with app.app_context():
            try:
                outcome.append(reset(db.session, redis_store.client, load_scenario("ps5-drop")))
            except PaidOrdersExist as refusal:
                outcome.append(refusal)
            finally:
                db.session.remove()

    resetter = threading.Thread(target=reset_in_another_thread)
    resetter.start()
    try:
        wait_until(lambda: blocked_on_a_row_lock(session), 10, message="the reset to wait for the hold's row lock")
    finally:
        confirming.commit()
        confirming.close()
        resetter.join(30)
    (refusal,) = outcome
    assert isinstance(refusal, PaidOrdersExist) and refusal.paid == {"ps5": {CONFIRMING: 1}}
    assert holds.get_hold(session, hold).status == CONFIRMING


def test_ps5_queue_is_the_contract_scenario_with_the_waiting_room(session, redis):
    seed(session, redis, load_scenario("ps5-queue"), now=NOW)
    product = session.execute(select(Product).where(Product.slug == "ps5q")).scalar_one()
    assert (product.total_stock, product.max_per_customer, product.waiting_room) == (100, 1, True)
    assert (product.sale_starts_at, product.sale_ends_at) == (NOW, NOW + timedelta(hours=1))
