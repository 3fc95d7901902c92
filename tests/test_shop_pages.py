"""Shopper pages through Flask's test client: every page, every form error, every outcome of section 6."""

import math
import re
from datetime import timedelta
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, Request, build_opener

import pytest
from sqlalchemy import select

from config import TestConfig
from flashsale import create_app, keys
from flashsale.errors import LockBusy
from flashsale.extensions import db, redis_store
from flashsale.inventory import locks
from flashsale.models import CONFIRMED, EXPIRED, PENDING, RELEASED, Order
from flashsale.worker import jobs
from tests.live_server import ROOT, LiveServer

KEY = "web-test-key-0001"


def buy(client, slug="ps5", email="ann@example.com", quantity="1", key=KEY, **extra):
    data = {"email": email, "quantity": quantity, "idempotency_key": key, **extra}
    return client.post(f"/products/{slug}/hold", data={k: v for k, v in data.items() if v is not None})


def orders(app, **filters):
    with app.app_context():
        found = db.session.execute(select(Order).filter_by(**filters)).scalars().all()
        db.session.remove()
        return found


def text(response):
    return response.get_data(as_text=True)


def buy_to_hold_page(client, **kwargs):
    """Buy through the form and return the hold page's path (/holds/<hold id>)."""
    response = buy(client, **kwargs)
    assert response.status_code == 303, text(response)
    return response.headers["Location"]


# --- sales list -------------------------------------------------------------------------------------

def test_sales_list_groups_live_upcoming_and_ended_sales_with_price_and_stock(client, make_product):
    make_product(slug="live-one", total_stock=10, price_cents=1999)
    make_product(slug="later", starts_in=timedelta(hours=2))
    make_product(slug="over", starts_in=timedelta(hours=-3), duration=timedelta(hours=1))
    page = text(client.get("/"))
    live, upcoming, ended = (page.index(f'id="group-{g}"') for g in ("live", "upcoming", "ended"))
    assert live < page.index("LIVE-ONE") < upcoming < page.index("LATER") < ended < page.index("OVER")
    assert "$19.99" in page and "10 of 10 left" in page
    assert 'data-countdown-to="' in page and ("in 119 min" in page or "in 120 min" in page)
    assert '<meter min="0" max="10"' in page


def test_an_empty_shop_says_how_to_load_a_sale(client):
    response = client.get("/")
    assert response.status_code == 200 and "flask seed ps5-drop" in text(response)


def test_a_sold_out_sale_is_listed_as_sold_out(client, make_product):
    make_product(total_stock=1)
    buy_to_hold_page(client)
    assert "Sold out" in text(client.get("/"))


# --- product page -----------------------------------------------------------------------------------

def test_product_page_shows_price_stock_limit_and_an_open_form(client, make_product):
    make_product(total_stock=7, max_per_customer=3, price_cents=49999)
    page = text(client.get("/products/ps5"))
    assert "$499.99" in page and "7 of 7 left" in page and "Limit 3 per customer" in page
    assert "data-buy-fieldset>" in page and "disabled data-buy-fieldset" not in page
    assert 'max="3"' in page and 'min="1"' in page
    assert re.search(r'name="idempotency_key" type="hidden" value="web-[\w-]{20,}"', page)
    assert '<label for="email">Email</label>' in page and '<label for="quantity">Quantity</label>' in page


def test_each_rendering_of_the_form_gets_its_own_idempotency_key(client, make_product):
    make_product()
    keys = {re.search(r'name="idempotency_key" type="hidden" value="([^"]+)"', text(client.get("/products/ps5")))[1]
            for _ in range(3)}
    assert len(keys) == 3


def test_product_page_by_id_works_too(client, make_product):
    product_id = make_product()
    assert client.get(f"/products/{product_id}").status_code == 200


@pytest.mark.parametrize("kwargs, banner, button", [
    ({"total_stock": 0}, "Sold out.", "Sold out"),
    ({"starts_in": timedelta(hours=1)}, "Not open yet", "Not open yet"),
    ({"starts_in": timedelta(hours=-2), "duration": timedelta(hours=1)}, "This sale ended", "Sale ended"),
])
def test_closed_sales_say_so_and_disable_the_form(client, make_product, kwargs, banner, button):
    make_product(**kwargs)
    page = text(client.get("/products/ps5"))
    assert banner in page and "disabled data-buy-fieldset" in page
    assert re.search(rf"data-buy-button[^>]*>\s*{button}\s*</button>", page)


def test_unknown_product_is_a_readable_404_page(client):
    for path in ("/products/nope", "/products/99999999999", "/products/NOT%20A%20SLUG"):
        response = client.get(path, headers={"Accept": "text/html"})
        assert response.status_code == 404 and "Back to the sales" in text(response)
        assert "Traceback" not in text(response)


def test_stock_endpoint_reports_available_units_state_and_server_time(client, make_product):
    make_product(total_stock=2, max_per_customer=2)
    before = client.get("/products/ps5/stock").json
    assert before["available"] == 2 and before["total"] == 2 and before["state"] == "live"
    assert before["server_time"].endswith("Z")
    buy_to_hold_page(client, quantity="2")
    assert client.get("/products/ps5/stock").json | {"server_time": None, "poll_seconds": None} == {
        "available": 0, "total": 2, "state": "sold_out", "server_time": None, "poll_seconds": None}


# --- buying: success and idempotency ----------------------------------------------------------------

def test_buying_places_a_hold_schedules_its_expiry_and_counts_it(app, client, make_product):
    make_product(total_stock=5, max_per_customer=2)
    location = buy_to_hold_page(client, email=" Ann@Example.com ", quantity="2")
    [order] = orders(app)
    assert location == f"/holds/{order.id}"
    assert (order.customer_email, order.quantity, order.status, order.idempotency_key) == (
        "ann@example.com", 2, PENDING, KEY)
    with app.app_context():
        from flashsale.worker.jobs import expiry_job_of

        assert expiry_job_of(order.hold_expires_at) in redis_store.queue.scheduled_job_registry.get_job_ids()
        assert redis_store.client.sismember(keys.expiry_slot(math.ceil(order.hold_expires_at.timestamp())), order.id)
    assert client.get("/admin/metrics").json["totals"]["created"] == 1


def test_resubmitting_the_same_form_makes_one_hold(app, client, make_product):
    make_product(total_stock=5)
    first, second = buy_to_hold_page(client), buy_to_hold_page(client)
    assert first == second and len(orders(app)) == 1
    assert "You already placed this hold" in text(client.get(second))


def test_the_same_key_with_other_details_is_refused_422(app, client, make_product):
    make_product(total_stock=5, max_per_customer=2)
    buy_to_hold_page(client)
    response = buy(client, quantity="2")
    assert response.status_code == 422 and "already sent with different details" in text(response)
    assert len(orders(app)) == 1
    assert KEY not in text(response)  # a fresh key, so sending the corrected form works


# --- buying: form errors (422) ------------------------------------------------------------------------

@pytest.mark.parametrize("email, quantity, field, message", [
    ("", "1", "email", "An email address is required."),
    ("not-an-email", "1", "email", "Enter a valid email address"),
    ("a@" + "b" * 260 + ".com", "1", "email", "254"),
    ("ann@example.com", "", "quantity", "Choose how many you want."),
    ("ann@example.com", "two", "quantity", "Not a valid integer value."),
    ("ann@example.com", "0", "quantity", "At least one."),
    ("ann@example.com", "3", "quantity", "At most 2 per customer."),
])
def test_form_errors_are_422_with_the_message_next_to_the_field(app, client, make_product, email, quantity,
                                                                   field, message):
    make_product(total_stock=5, max_per_customer=2)
    response = buy(client, email=email, quantity=quantity)
    page = text(response)
    assert response.status_code == 422
    errors = re.search(rf'<ul class="field-errors" id="{field}-errors">(.*?)</ul>', page, re.S)
    assert errors and message in errors[1]
    assert f'aria-describedby="{field}-errors"' in page and 'aria-invalid="true"' in page
    assert "Please correct the fields" in page and orders(app) == []


def test_a_malformed_idempotency_key_is_a_form_error(app, client, make_product):
    make_product()
    response = buy(client, key="has spaces in it")
    assert response.status_code == 422 and "printable ASCII" in text(response) and orders(app) == []


# --- buying: refusals (409, 503, 429) ---------------------------------------------------------------

def test_sold_out_is_409_with_a_message_and_no_hold(app, client, make_product):
    make_product(total_stock=1)
    buy_to_hold_page(client)
    response = buy(client, email="bob@example.com", key="web-other-key-0002")
    assert response.status_code == 409 and "Sold out" in text(response)
    assert 'class="flash error" role="alert"' in text(response) and len(orders(app)) == 1


def test_asking_for_more_than_is_left_says_how_many_are(client, make_product):
    make_product(total_stock=3, max_per_customer=3)
    buy_to_hold_page(client, quantity="2")
    response = buy(client, email="bob@example.com", quantity="2", key="web-other-key-0002")
    assert response.status_code == 409 and "only 1 left" in text(response)


@pytest.mark.parametrize("kwargs, message", [
    ({"starts_in": timedelta(hours=1)}, "has not started yet"),
    ({"starts_in": timedelta(hours=-2), "duration": timedelta(hours=1)}, "has ended"),
])
def test_a_closed_sale_refuses_a_posted_form_with_409(app, client, make_product, kwargs, message):
    make_product(**kwargs)
    response = buy(client)
    assert response.status_code == 409 and message in text(response) and orders(app) == []


def test_the_per_customer_limit_is_409(app, client, make_product):
    make_product(total_stock=5, max_per_customer=1)
    buy_to_hold_page(client)
    response = buy(client, key="web-second-key-0002")
    assert response.status_code == 409 and "limit of 1 per customer" in text(response)
    assert len(orders(app)) == 1


def test_a_busy_lock_is_503_with_retry_after_and_counted(app, client, make_product, monkeypatch):
    make_product()

    def busy(self):
        raise LockBusy(waited_ms=3000)

    monkeypatch.setattr(locks.ProductLock, "acquire", busy)
    response = buy(client)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "try again in a moment" in text(response) and orders(app) == []
    assert client.get("/admin/metrics").json["totals"]["busy"] == 1


def test_redis_down_is_a_readable_503_page(app, make_product):
    make_product()
    broken = create_app(TestConfig, REDIS_URL="redis://127.0.0.1:1/0", REDIS_SOCKET_TIMEOUT=0.2)
    response = broken.test_client().post("/products/ps5/hold", data={
        "email": "ann@example.com", "quantity": "1", "idempotency_key": KEY})
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "retry shortly" in text(response) and "Traceback" not in text(response)
    assert orders(app) == []


# --- CSRF --------------------------------------------------------------------------------------------

def test_csrf_refuses_a_post_without_its_token_and_accepts_the_rendered_one(app, make_product):
    make_product()
    strict = create_app(TestConfig, WTF_CSRF_ENABLED=True)
    client = strict.test_client()
    refused = client.post("/products/ps5/hold", data={"email": "ann@example.com", "quantity": "1"},
                          headers={"Accept": "text/html"})
    assert refused.status_code == 400 and "CSRF" in text(refused) and orders(app) == []
    page = text(client.get("/products/ps5"))
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)[1]
    key = re.search(r'name="idempotency_key" type="hidden" value="([^"]+)"', page)[1]
    accepted = client.post("/products/ps5/hold", data={
        "email": "ann@example.com", "quantity": "1", "idempotency_key": key, "csrf_token": token})
    assert accepted.status_code == 303
    hold_page = text(client.get(accepted.headers["Location"]))
    assert hold_page.count('name="csrf_token"') == 2  # confirm and release forms both carry it
    assert client.post(accepted.headers["Location"] + "/release").status_code == 400
    assert orders(app)[0].status == PENDING


# --- the hold page ----------------------------------------------------------------------------------

def test_hold_page_counts_down_from_the_server_expiry_with_confirm_and_release(app, client, make_product):
    make_product()
    location = buy_to_hold_page(client)
    page = text(client.get(location))
    [order] = orders(app)
    assert "Your units are held" in page and "Confirm and pay $499.99" in page and ">Release</button>" in page
    expires = re.search(r'data-expires-at="([^"]+)"', page)[1]
    assert expires.startswith(order.hold_expires_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert re.search(r'data-server-now="[^"]+Z"', page)
    assert re.search(r"data-hold-countdown>1(19|20) s</strong>", page)


def test_unknown_or_malformed_hold_tokens_are_404(client):
    for path in ("/holds/" + "A" * 24, "/holds/short", "/holds/" + "A" * 24 + "/status"):
        response = client.get(path, headers={"Accept": "text/html"})
        assert response.status_code == 404
    assert client.post("/holds/" + "A" * 24 + "/confirm").status_code == 404


def test_confirming_stops_the_clock_and_the_page_follows_the_payment_to_confirmed(app, client, make_product):
    make_product()
    location = buy_to_hold_page(client)
    assert "data-countdown-to" in client.get(location).get_data(as_text=True)
    response = client.post(location + "/confirm")
    assert response.status_code == 303 and response.headers["Location"] == location
    html = page = client.get(location).get_data(as_text=True)
    assert "Payment in progress" in page and "the clock has stopped" in page
    assert "Confirmed: your units are kept for you" in page  # the flash message
    assert "data-countdown-to" not in html and "Release</button>" not in html  # no timer, no release
    assert '<noscript><meta http-equiv="refresh"' in html  # without JavaScript the page refreshes itself
    polled = client.get(location + "/status").json
    assert (polled["status"], polled["confirming"]) == ("CONFIRMING", True)
    again = client.post(location + "/confirm")  # a second click while the payment runs
    assert again.status_code == 303 and "already accepted" in text(client.get(location))
    with app.app_context():
        assert jobs.take_payment(location.rsplit("/", 1)[1]) == "confirmed"
    status = client.get(location + "/status").json
    assert status["status"] == CONFIRMED and status["confirming"] is False
    page = text(client.get(location))
    assert "Purchase confirmed" in page and "Paid and confirmed" in page and "Confirm and pay" not in page
    again = client.post(location + "/confirm")
    assert again.status_code == 303 and "already confirmed" in text(client.get(location))


def test_confirming_after_expiry_is_409_and_the_page_says_expired(client, shop, make_product):
    make_product(total_stock=1)
    location = buy_to_hold_page(client)
    shop.lapse(location.rsplit("/", 1)[1])
    assert client.get(location + "/status").json["status"] == EXPIRED  # read-time, before any job
    response = client.post(location + "/confirm")
    page = text(response)
    assert response.status_code == 409 and "Your hold expired" in page and "can no longer be confirmed" in page
    assert client.get("/products/ps5/stock").json["available"] == 1


def test_releasing_gives_units_back_and_is_harmless_twice(app, client, make_product):
    make_product(total_stock=1)
    location = buy_to_hold_page(client)
    assert client.get("/products/ps5/stock").json["available"] == 0
    response = client.post(location + "/release")
    assert response.status_code == 303
    page = text(client.get(location))
    assert "Hold released" in page and "You released this hold" in page
    assert client.get("/products/ps5/stock").json["available"] == 1
    assert client.post(location + "/release").status_code == 303
    assert [o.status for o in orders(app)] == [RELEASED]
    assert client.get("/admin/metrics").json["totals"]["released"] == 1


def test_confirming_a_released_hold_is_409(client, make_product):
    make_product()
    location = buy_to_hold_page(client)
    client.post(location + "/release")
    response = client.post(location + "/confirm")
    assert response.status_code == 409 and "was released" in text(response)


def test_releasing_a_hold_being_paid_for_is_409(app, client, make_product):
    make_product()
    location = buy_to_hold_page(client)
    client.post(location + "/confirm")
    response = client.post(location + "/release")
    assert response.status_code == 409 and "payment is in progress" in text(response)
    assert [o.status for o in orders(app)] == ["CONFIRMING"]


def test_releasing_a_confirmed_hold_is_409(app, client, make_product):
    make_product()
    location = buy_to_hold_page(client)
    client.post(location + "/confirm")
    with app.app_context():
        jobs.take_payment(location.rsplit("/", 1)[1])
    response = client.post(location + "/release")
    assert response.status_code == 409 and "already confirmed" in text(response)


def test_releasing_an_expired_hold_is_409(client, shop, make_product):
    make_product()
    location = buy_to_hold_page(client)
    shop.lapse(location.rsplit("/", 1)[1])
    response = client.post(location + "/release")
    assert response.status_code == 409 and "expired" in text(response)


def test_a_refused_payment_reads_as_released_with_nothing_charged(app, client, make_product):
    make_product()
    location = buy_to_hold_page(client, email="ann+refuse@example.com")
    client.post(location + "/confirm")
    with app.app_context():
        assert jobs.take_payment(location.rsplit("/", 1)[1]) == "refused"
    page = text(client.get(location))
    assert "Hold released" in page and "payment was refused" in page


# --- no inline script or style (the CSP forbids them) ---------------------------------------------------

INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "inline <script>"),
    (re.compile(r"\sstyle\s*=", re.I), "style= attribute"),
    (re.compile(r"<style", re.I), "<style> element"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "on*= handler"),
    (re.compile(r"javascript:", re.I), "javascript: URL"),
    (re.compile(r"https?://", re.I), "an absolute URL (CDN?)"),
]


def test_templates_have_no_inline_script_style_or_handlers():
    for path in sorted((ROOT / "templates").rglob("*.html")):
        source = path.read_text()
        for pattern, what in INLINE:
            assert not pattern.search(source), f"{path.relative_to(ROOT)} has {what}"


def test_rendered_pages_have_no_inline_script_or_style(app, client, make_product):
    make_product()
    location = buy_to_hold_page(client)
    for path in ("/", "/products/ps5", location, "/admin/", "/products/nope"):
        page = text(client.get(path, headers={"Accept": "text/html"}))
        for pattern, what in INLINE[:5]:
            assert not pattern.search(page), f"{path} renders {what}"
        for src in re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', page):
            assert src.startswith("/static/"), f"{path} loads {src} from elsewhere"
            assert (ROOT / src.lstrip("/")).is_file()


def test_scripts_are_files_under_static_js():
    assert {p.name for p in (ROOT / "static" / "js").glob("*.js")} >= {"common.js", "product.js", "hold.js",
                                                                      "admin.js"}


# --- real server: CSRF on, rate limits on ------------------------------------------------------------------

def test_the_buy_form_is_rate_limited_like_the_api_and_the_refusal_is_counted(app, make_product):
    """On the web server with production settings (CSRF and limits on): the third buy from one address is 429."""
    make_product(total_stock=50, max_per_customer=1)
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=1, threads=4,
                    RATELIMIT_ENABLED="true", RATELIMIT_HOLD_PER_ADDRESS="2/minute",
                    RATELIMIT_HOLD_PER_EMAIL="100/minute") as server:
        browser = build_opener(HTTPCookieProcessor())
        statuses = []
        for i in range(3):
            page = browser.open(server.url + "/products/ps5").read().decode()
            fields = {name: re.search(rf'name="{name}" type="hidden" value="([^"]+)"', page)[1]
                      for name in ("csrf_token", "idempotency_key")}
            body = urlencode({**fields, "email": f"r{i}@example.com", "quantity": "1"}).encode()
            request = Request(server.url + "/products/ps5/hold", data=body, headers={"Accept": "text/html"})
            try:
                with browser.open(request) as response:
                    statuses.append((response.status, response.geturl()))
            except HTTPError as refusal:
                statuses.append((refusal.code, refusal.headers.get("Retry-After"), refusal.read().decode()))
        assert [s[0] for s in statuses] == [200, 200, 429]  # two followed their 303 to a hold page
        assert all("/holds/" in s[1] for s in statuses[:2])
        assert int(statuses[2][1]) >= 1 and "Too many requests" in statuses[2][2]
        metrics = browser.open(server.url + "/admin/metrics").read().decode()
        assert '"rate_limited":1' in metrics.replace(" ", "")
    assert len(orders(app)) == 2


def test_no_page_shows_a_stack_trace_on_an_unexpected_error(app, client, make_product, monkeypatch):
    make_product()
    from flashsale.shop import routes

    monkeypatch.setattr(routes, "render_product", lambda *a, **k: 1 / 0)
    response = client.get("/products/ps5", headers={"Accept": "text/html"})
    assert response.status_code == 500 and "Something went wrong" in text(response)
    assert "ZeroDivisionError" not in text(response)


def test_static_files_exist_for_every_template_reference():
    for path in (ROOT / "templates").rglob("*.html"):
        for name in re.findall(r"filename='([^']+)'", path.read_text()):
            assert (ROOT / "static" / name).is_file(), f"{path.name} references missing static/{name}"
