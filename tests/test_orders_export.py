"""`flask orders export`: every matching order for fulfilment, emails unmasked; bad filters write nothing."""

import csv
import io
import json

import pytest

from flashsale.inventory import holds
from tests.paying import confirm_and_pay

HEADER = ["hold_id", "product_slug", "email", "quantity", "amount_cents", "currency", "status", "created_at",
          "confirmed_at", "payment_reference"]


@pytest.fixture
def flask_orders(app, ctx):
    """Run `flask orders ARGS...` in-process; the click Result."""
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=["orders", *args])


@pytest.fixture
def sale(session, redis, shop, make_product):
    """Two sales: confirmed, released, pending, refused and lapsed holds. {status: [hold ids]}."""
    make_product(slug="ps5", total_stock=20, max_per_customer=3, price_cents=1000, currency="eur")
    make_product(slug="xbox", total_stock=20, price_cents=500)
    ids = {"CONFIRMED": [], "RELEASED": [], "PENDING": [], "EXPIRED": []}
    for n in range(3):
        held = shop.place(f"Buyer{n}@Example.com", quantity=n + 1).id
        confirm_and_pay(session, redis, held)
        ids["CONFIRMED"].append(held)
    other = shop.place("other@x.io", slug="xbox").id
    confirm_and_pay(session, redis, other)
    ids["CONFIRMED"].append(other)
    released = shop.place("gone@x.io").id
    holds.release_hold(session, redis, released)
    refused = shop.place("card+refuse@x.io").id
    confirm_and_pay(session, redis, refused)
    ids["RELEASED"] += [released, refused]
    ids["PENDING"].append(shop.place("waiting@x.io").id)
    return ids


def test_the_confirmed_orders_are_exactly_the_confirmed_holds_with_their_emails(flask_orders, sale, shop,
                                                                                tmp_path):
    target = tmp_path / "confirmed.csv"
    result = flask_orders("export", "--status", "CONFIRMED", "--output", str(target))
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(target.read_text())))
    assert rows[0] == HEADER
    found = {row[0]: dict(zip(HEADER, row, strict=True)) for row in rows[1:]}
    assert set(found) == set(sale["CONFIRMED"]) and len(rows) == 1 + len(sale["CONFIRMED"])
    first = found[sale["CONFIRMED"][2]]
    assert (first["email"], first["product_slug"], first["quantity"]) == ("buyer2@example.com", "ps5", "3")
    assert (first["amount_cents"], first["currency"], first["status"]) == ("3000", "eur", "CONFIRMED")
    assert first["payment_reference"] == shop.payment(sale["CONFIRMED"][2]).charge_ref
    assert first["created_at"].endswith("Z") and first["confirmed_at"].endswith("Z")
    assert found[sale["CONFIRMED"][3]]["product_slug"] == "xbox"


def test_jsonl_by_product_lists_every_status_and_stdout_is_the_default(flask_orders, sale):
    result = flask_orders("export", "--product", "ps5", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [list(line) for line in lines] == [HEADER] * len(lines)
    every_ps5 = set(sale["CONFIRMED"][:3] + sale["RELEASED"] + sale["PENDING"])
    assert {line["hold_id"] for line in lines} == every_ps5
    pending = next(line for line in lines if line["status"] == "PENDING")
    assert pending["confirmed_at"] is None and pending["payment_reference"] is None
    assert pending["amount_cents"] == 1000 and pending["email"] == "waiting@x.io"


@pytest.mark.parametrize("args, message", [
    (["--product", "nope"], "no product with slug 'nope'"),
    (["--status", "SHIPPED"], "'SHIPPED' is not a status"),
    (["--format", "xml"], "'xml' is not one of"),
])
def test_a_bad_filter_is_exit_2_with_a_message_and_nothing_written(flask_orders, sale, tmp_path, args, message):
    target = tmp_path / "out.csv"
    result = flask_orders("export", *args, "--output", str(target))
    assert result.exit_code == 2 and message in result.output
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_its_help_says_the_emails_are_not_masked(flask_orders):
    result = flask_orders("export", "--help")
    assert result.exit_code == 0 and "EMAILS ARE NOT MASKED" in result.output
