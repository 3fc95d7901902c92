"""Scenarios in seeds/: `flask seed` loads them idempotently, with windows relative to now, and lists them."""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from flashsale.errors import SaleNotOpen
from flashsale.inventory import holds
from flashsale.inventory.audit import audit
from flashsale.models import InventoryEvent, Order, Product
from flashsale.seeding import describe, load_scenario, parse_duration, scenario_names, seed, window_text

# Seeded windows are compared with the database clock by some checks: build "now" at run time.
NOW = datetime.now(timezone.utc).replace(microsecond=0)
REQUIRED = {"ps5-drop", "multi-drop", "upcoming-sale", "ended-sale", "low-stock", "mega-sale"}


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


def test_seeding_twice_gives_the_same_data(session, redis):
    for name in ("ps5-drop", "multi-drop"):
        seed(session, redis, load_scenario(name), now=NOW)
    first = snapshot(session)
    for name in ("ps5-drop", "multi-drop"):
        seed(session, redis, load_scenario(name), now=NOW)
    assert snapshot(session) == first
    assert len(first) == 4


def test_a_reseed_starts_the_sale_over(session, redis, policy):
    seed(session, redis, load_scenario("ps5-drop"))
    holds.place_hold(session, redis, "ps5", "early@example.com", 1, policy)
    assert count(session, Order) == 1
    product_id = snapshot(session)["ps5"][0]

    seed(session, redis, load_scenario("ps5-drop"))
    assert count(session, Order) == 0 and count(session, InventoryEvent) == 0
    assert snapshot(session)["ps5"][0] == product_id  # same row, so links to it stay valid
    assert audit(session) == []
    holds.place_hold(session, redis, "ps5", "early@example.com", 1, policy)  # the limit starts over too


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


def test_an_unknown_scenario_names_the_known_ones(app):
    result = app.test_cli_runner().invoke(args=["seed", "black-friday"])
    assert result.exit_code != 0
    assert "no scenario 'black-friday'" in result.output and "ps5-drop" in result.output
    with pytest.raises(LookupError):
        load_scenario("../config")


def test_the_list_describes_products_stock_windows_and_crowds(app):
    result = app.test_cli_runner().invoke(args=["seed", "--list"])
    assert result.exit_code == 0, result.output
    for name in REQUIRED:
        assert name in result.output
    assert "ps5: PlayStation 5, 100 units at 499.99, 1 per customer, live now for 1h" in result.output
    assert "crowd: 5,000 buyers for ps5, burst" in result.output
    assert "opens in 10m for 2h" in result.output and "ended 1h ago" in result.output
    assert "100,000 units" in result.output
    assert describe(load_scenario("ps5-drop")) in result.output


def test_the_seed_command_loads_a_scenario(app, ctx, session):
    result = app.test_cli_runner().invoke(args=["seed", "low-stock"])
    assert result.exit_code == 0, result.output
    assert "seeded gold-edition: 3 units" in result.output
    assert snapshot(session)["gold-edition"][3] == 3
