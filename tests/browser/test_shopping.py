"""A shopper in a real browser: buy -> hold -> confirm, sold out, a hold lapsing on screen, release."""

import re

from playwright.sync_api import expect
from sqlalchemy import select

from config import TestConfig
from flashsale.extensions import db
from flashsale.models import CONFIRMED, RELEASED, Order
from tests.live_server import LiveServer


def statuses(app):
    with app.app_context():
        found = [o.status for o in db.session.execute(select(Order)).scalars()]
        db.session.remove()
        return found


def buy_in_page(page, email="ann@example.com", quantity=None):
    """Fill the buy form with the keyboard-reachable, labelled fields and send it with Enter."""
    page.get_by_label("Email").fill(email)
    if quantity is not None:
        page.get_by_label("Quantity").fill(str(quantity))
    page.get_by_label("Quantity").press("Enter")
    expect(page).to_have_url(re.compile(r"/holds/[\w-]+$"))


def api_hold(page, base_url, email, slug="ps5"):
    """Another shopper buys through the JSON API (same origin, so the page's request context works)."""
    response = page.request.post(f"{base_url}/api/products/{slug}/holds", data={"email": email})
    assert response.status == 201, response.text()
    return response.json()


def test_buy_hold_confirm(app, live, page, make_product):
    make_product(total_stock=5, max_per_customer=2, price_cents=12345)
    response = page.goto(f"{live.url}/products/ps5")
    # The page fixture fails the test on any console error, so this proves the pages obey a strict CSP.
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("[data-stock-text]")).to_have_text("5 of 5 left")
    buy_in_page(page, quantity=2)
    expect(page.get_by_role("heading", level=1)).to_have_text("Your units are held")
    expect(page.locator("[data-hold-countdown]")).to_have_text(re.compile(r"^[01]:\d\d$"))
    page.get_by_role("button", name="Confirm and pay $246.90").click()
    # The confirmation is accepted at once: the clock stops while the (1.5 s) payment runs.
    expect(page.get_by_role("heading", level=1)).to_have_text("Payment in progress")
    expect(page.locator("[data-hold-countdown]")).to_have_count(0)
    expect(page.get_by_role("button", name="Release")).to_have_count(0)
    expect(page.get_by_role("heading", level=1)).to_have_text("Purchase confirmed", timeout=15_000)
    expect(page.locator("[data-hold-result]")).to_contain_text("Paid and confirmed")
    assert statuses(app) == [CONFIRMED]


def test_a_refused_payment_shows_in_progress_then_refused(app, live, page, make_product):
    make_product(total_stock=1)
    page.goto(f"{live.url}/products/ps5")
    buy_in_page(page, email="broke+refuse@example.com")
    page.get_by_role("button", name=re.compile("^Confirm and pay")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Payment in progress")
    expect(page.get_by_role("heading", level=1)).to_have_text("Hold released", timeout=15_000)
    expect(page.locator("[data-hold-result]")).to_contain_text("payment was refused")
    assert statuses(app) == [RELEASED]


def test_a_double_click_on_buy_makes_one_hold(app, live, page, make_product):
    make_product(total_stock=5)
    page.goto(f"{live.url}/products/ps5")
    page.get_by_label("Email").fill("dbl@example.com")
    page.get_by_role("button", name=re.compile("^Hold it")).dblclick()
    expect(page).to_have_url(re.compile(r"/holds/[\w-]+$"))
    assert len(statuses(app)) == 1


def test_sold_out_shows_on_the_open_page_and_disables_the_form(app, live, page, make_product):
    make_product(total_stock=1)
    page.goto(f"{live.url}/products/ps5")
    button = page.locator("[data-buy-button]")
    expect(button).to_be_enabled()
    hold = api_hold(page, live.url, "quick@example.com")
    # No reload: the page's poll (every 3 s) notices.
    expect(page.locator("[data-sale-banner]")).to_contain_text("Sold out", timeout=8_000)
    expect(button).to_be_disabled()
    expect(button).to_have_text("Sold out")
    expect(page.get_by_label("Email")).to_be_disabled()
    page.request.post(f"{live.url}/api/holds/{hold['id']}/release")
    # A sold-out page polls at the server's sold-out pace (10 s, x0.75-1.25 jitter).
    expect(button).to_be_enabled(timeout=15_000)
    expect(page.locator("[data-stock-text]")).to_have_text("1 of 1 left")


def test_releasing_gives_the_units_back(app, live, page, make_product):
    make_product(total_stock=1)
    page.goto(f"{live.url}/products/ps5")
    buy_in_page(page)
    page.get_by_role("button", name="Release").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Hold released")
    expect(page.locator(".flash")).to_contain_text("back on sale")
    assert statuses(app) == [RELEASED]
    page.get_by_role("link", name="Back to PS5").click()
    expect(page.locator("[data-stock-text]")).to_have_text("1 of 1 left")
    expect(page.locator("[data-buy-button]")).to_be_enabled()


def test_a_hold_lapses_on_screen(app, live, page, make_product):
    """With HOLD_SECONDS=3 the countdown runs out, the buttons go, and the page says the hold expired."""
    make_product(total_stock=1)
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=1, threads=4,
                    HOLD_SECONDS=3) as short:  # expiry jobs run on the module's worker
        page.goto(f"{short.url}/products/ps5")
        buy_in_page(page)
        expect(page.get_by_role("heading", level=1)).to_have_text("Your units are held")
        expect(page.get_by_role("heading", level=1)).to_have_text("Your hold expired", timeout=10_000)
        expect(page.locator("[data-hold-result]")).to_contain_text("nothing was charged")
        expect(page.get_by_role("button", name=re.compile("Confirm"))).to_have_count(0)
        page.get_by_role("link", name="Try again").click()
        expect(page.locator("[data-stock-text]")).to_have_text("1 of 1 left")
        page.goto("about:blank")  # the product page polls its stock: leave it before its server stops


def test_form_errors_are_announced_and_focused_then_the_fixed_form_works(app, live, page, browser_errors,
                                                                        make_product):
    make_product(total_stock=3, max_per_customer=2)
    page.goto(f"{live.url}/products/ps5")
    page.get_by_label("Email").fill("not-an-email")
    page.get_by_label("Quantity").fill("3")
    page.get_by_label("Quantity").press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("Please correct the fields")
    expect(page.get_by_label("Email")).to_be_focused()
    expect(page.locator("#email-errors")).to_contain_text("Enter a valid email address")
    expect(page.locator("#quantity-errors")).to_contain_text("At most 2 per customer")
    assert statuses(app) == []
    # The reason phrase is the server's to choose (granian sends the standard one, gunicorn sent Werkzeug's).
    assert [error.lower() for error in browser_errors] == [
        "failed to load resource: the server responded with a status of 422 (unprocessable entity)"]
    browser_errors.clear()
    page.get_by_label("Email").fill("ann@example.com")
    page.get_by_label("Quantity").fill("2")
    page.get_by_label("Quantity").press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Your units are held")
    assert len(statuses(app)) == 1


def test_a_refusal_after_sending_the_form_is_a_flash_message(app, live, page, browser_errors, make_product):
    make_product(total_stock=1)
    page.goto(f"{live.url}/products/ps5")
    api_hold(page, live.url, "faster@example.com")  # someone else takes the last unit meanwhile
    page.get_by_label("Email").fill("ann@example.com")
    page.get_by_label("Email").press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("Sold out")
    expect(page.locator("[data-buy-button]")).to_be_disabled()
    assert [e for e in browser_errors if "409" not in e] == []
    browser_errors.clear()


def test_buying_confirming_and_releasing_work_without_javascript(app, live, chromium, make_product):
    """Plain forms and redirects; while the payment runs a <noscript> refresh brings the result."""
    make_product(total_stock=2, max_per_customer=1)
    context = chromium.new_context(java_script_enabled=False)
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        for email, action, outcome in (("nojs1@example.com", "Confirm and pay", "Purchase confirmed"),
                                       ("nojs2@example.com", "Release", "Hold released")):
            page.goto(f"{live.url}/products/ps5")
            buy_in_page(page, email=email)
            expect(page.get_by_role("heading", level=1)).to_have_text("Your units are held")
            page.get_by_role("button", name=re.compile(action)).click()
            if action == "Confirm and pay":  # accepted at once; the refresh follows the payment
                expect(page.get_by_role("heading", level=1)).to_have_text("Payment in progress")
            expect(page.get_by_role("heading", level=1)).to_have_text(outcome, timeout=15_000)
    finally:
        context.close()
    assert sorted(statuses(app)) == [CONFIRMED, RELEASED]
