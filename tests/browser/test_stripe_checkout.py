"""A shopper paying by card in a real browser, against a local Stripe and its Stripe.js stand-in.

The production web server and a worker run with PAYMENT_GATEWAY=stripe pointed at localstripe, whose
/js.stripe.com/v3/ script stands in for Stripe.js (its card element is four plain inputs, its 3-D
Secure dialog two buttons). The page fixture fails any test whose page broke its CSP or threw.
"""

import re

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from config import TestConfig
from flashsale.extensions import db
from flashsale.models import Order
from tests.live_server import LiveServer


@pytest.fixture(scope="module")
def stripe_live(app, chromium, localstripe_server):
    """The web server and a worker taking payments through localstripe."""
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=1, threads=8,
                    with_worker=True, HOLD_SECONDS=60, SWEEP_SECONDS=1,
                    **localstripe_server.settings()) as server:
        yield server


def only_hold(app):
    with app.app_context():
        found = db.session.execute(select(Order)).scalar_one()
        db.session.remove()
        return found


def to_the_card_step(page, url, total):
    """Buy one unit, confirm on the hold page (the clock stops), and wait for the card form."""
    page.goto(f"{url}/products/ps5")
    page.get_by_label("Email").fill("cardholder@example.com")
    page.get_by_label("Quantity").press("Enter")
    expect(page).to_have_url(re.compile(r"/holds/[\w-]+$"))
    page.get_by_role("button", name=f"Confirm and pay {total}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Payment in progress")
    expect(page.locator("[data-card-form]")).to_be_visible()
    csp = page.evaluate("() => document.querySelector('[data-hold]') && 'ok'")
    assert csp == "ok"


def enter_card(page, number):
    """Type a card into the stand-in's card element (Stripe's own is an iframe with the same fields)."""
    element = page.locator("[data-card-element]")
    element.get_by_placeholder("number").fill(number)
    element.get_by_placeholder("exp_month").fill("12")
    element.get_by_placeholder("exp_year").fill("34")
    element.get_by_placeholder("cvc").fill("123")
    element.get_by_placeholder("postal_code").fill("10001")


def pay(page, total):
    page.get_by_role("button", name=f"Pay {total}").click()


def expect_confirmed(page, app, localstripe, amount):
    expect(page.get_by_role("heading", level=1)).to_have_text("Purchase confirmed", timeout=20_000)
    order = only_hold(app)
    assert order.status == "CONFIRMED"
    captured = [i for i in localstripe.intents() if i["status"] == "succeeded"]
    assert [(i["metadata"]["hold_id"], i["amount"], i["currency"]) for i in captured] == [(order.id, amount, "usd")]


def test_a_card_that_pays_confirms_the_hold(app, stripe_live, localstripe, page, make_product):
    make_product(total_stock=3, price_cents=12345)
    response = page.goto(f"{stripe_live.url}/products/ps5")
    assert localstripe.url not in response.headers["content-security-policy"]  # only the hold page lets it in
    to_the_card_step(page, stripe_live.url, "$123.45")
    enter_card(page, "4242424242424242")
    pay(page, "$123.45")
    expect_confirmed(page, app, localstripe, 12345)


def test_3d_secure_in_stripes_dialog_then_confirmed(app, stripe_live, localstripe, page, make_product):
    make_product(total_stock=3, price_cents=5000)
    to_the_card_step(page, stripe_live.url, "$50.00")
    enter_card(page, "4000002500003155")
    pay(page, "$50.00")
    page.get_by_role("button", name="Complete authentication").click()  # the 3-D Secure dialog
    expect_confirmed(page, app, localstripe, 5000)


def test_a_declined_card_then_another_card_confirms(app, stripe_live, localstripe, page, make_product):
    make_product(total_stock=3, price_cents=2500)
    to_the_card_step(page, stripe_live.url, "$25.00")
    enter_card(page, "4000000000000341")
    pay(page, "$25.00")
    expect(page.locator("[data-card-error]")).to_contain_text("declined")
    assert only_hold(app).status == "CONFIRMING"  # the units stay the shopper's meanwhile
    enter_card(page, "4242424242424242")
    pay(page, "$25.00")
    expect_confirmed(page, app, localstripe, 2500)
