"""Bad input, table-driven: every malformed, mistyped, hostile or oversized request, through the JSON API
and through the shop's web forms, gets the right 4xx with a contract error code (JSON for the API, a
readable page for the forms), and leaves orders and the ledger exactly as they were.

The app under test has rate limiting switched on (with limits too high to trip), because the limiter
reads the body too (per-email key) and must not turn a bad body into a 500.
"""

import pytest
from sqlalchemy import select

from config import TestConfig
from flashsale import create_app
from flashsale.extensions import db, limiter
from flashsale.inventory import holds
from flashsale.inventory.holds import HoldPolicy
from flashsale.models import InventoryEvent, Order

HOLDS = "/api/products/ps5/holds"
JSON = "application/json"
A_REAL_LOOKING_HOLD_ID = "Q2hhbmdlTWVJZk5vdFJlYWw"  # the shape of a token, but no such hold


def deep(opening, closing, depth=5000):
    return opening * depth + closing * depth


def post_json(body, path=HOLDS, **headers):
    return {"method": "POST", "path": path, "json": body, "headers": headers}


def post_raw(data, content_type=JSON, path=HOLDS):
    return {"method": "POST", "path": path, "data": data, "content_type": content_type}


def call(method, path):
    return {"method": method, "path": path}


EMAIL = {"email": "ann@example.com"}
# (case id, request, status, error code, field named in error.fields or None)
CASES = [
    # malformed and deeply nested JSON
    ("truncated-json", post_raw('{"email": "a@x.io"'), 422, "invalid", "body"),
    ("not-json-at-all", post_raw("email=a@x.io"), 422, "invalid", "body"),
    ("single-quoted-json", post_raw("{'email': 'a@x.io'}"), 422, "invalid", "body"),
    ("trailing-garbage", post_raw('{"email": "a@x.io"} x'), 422, "invalid", "body"),
    ("invalid-utf8", post_raw(b'{"email": "\xff\xfe@x.io"}'), 422, "invalid", "body"),
    ("deeply-nested-arrays", post_raw(deep("[", "]")), 422, "invalid", "body"),
    ("deeply-nested-objects", post_raw(deep('{"a":', "}", 2500)), 422, "invalid", "body"),
    ("nested-email", post_json({"email": {"email": {"email": "a@x.io"}}}), 422, "invalid", "email"),
    ("json-array-body", post_json([EMAIL]), 422, "invalid", "body"),
    ("json-string-body", post_json("ann@example.com"), 422, "invalid", "body"),
    ("json-null-body", post_raw("null"), 422, "invalid", "body"),
    ("empty-body", post_raw(""), 422, "invalid", "body"),
    # wrong types and ranges for quantity
    ("quantity-string", post_json({**EMAIL, "quantity": "1"}), 422, "invalid", "quantity"),
    ("quantity-float", post_json({**EMAIL, "quantity": 1.5}), 422, "invalid", "quantity"),
    ("quantity-whole-float", post_json({**EMAIL, "quantity": 1.0}), 422, "invalid", "quantity"),
    ("quantity-true", post_json({**EMAIL, "quantity": True}), 422, "invalid", "quantity"),
    ("quantity-null", post_json({**EMAIL, "quantity": None}), 422, "invalid", "quantity"),
    ("quantity-zero", post_json({**EMAIL, "quantity": 0}), 422, "invalid", "quantity"),
    ("quantity-negative", post_json({**EMAIL, "quantity": -1}), 422, "invalid", "quantity"),
    ("quantity-billion", post_json({**EMAIL, "quantity": 10**9}), 422, "invalid", "quantity"),
    ("quantity-2-to-the-70", post_json({**EMAIL, "quantity": 2**70}), 422, "invalid", "quantity"),
    ("quantity-nan", post_raw('{"email": "a@x.io", "quantity": NaN}'), 422, "invalid", "quantity"),
    ("quantity-infinity", post_raw('{"email": "a@x.io", "quantity": -Infinity}'), 422, "invalid",
     "quantity"),
    ("quantity-list", post_json({**EMAIL, "quantity": [1]}), 422, "invalid", "quantity"),
    # missing and unknown fields
    ("missing-email", post_json({"quantity": 1}), 422, "invalid", "email"),
    ("empty-object", post_json({}), 422, "invalid", "email"),
    ("unknown-field-status", post_json({**EMAIL, "status": "CONFIRMED"}), 422, "invalid", "status"),
    ("unknown-field-price", post_json({**EMAIL, "price_cents": 0}), 422, "invalid", "price_cents"),
    ("unknown-field-proto", post_json({**EMAIL, "__proto__": {"admin": True}}), 422, "invalid",
     "__proto__"),
    # hostile and malformed emails
    ("email-empty", post_json({"email": ""}), 422, "invalid", "email"),
    ("email-blank", post_json({"email": "   "}), 422, "invalid", "email"),
    ("email-too-long", post_json({"email": "a" * 250 + "@x.io"}), 422, "invalid", "email"),
    ("email-local-part-too-long", post_json({"email": "a" * 65 + "@x.io"}), 422, "invalid", "email"),
    ("email-not-an-email", post_json({"email": "not-an-email"}), 422, "invalid", "email"),
    ("email-no-domain-dot", post_json({"email": "ann@localhost"}), 422, "invalid", "email"),
    ("email-double-dot", post_json({"email": "ann..lee@example.com"}), 422, "invalid", "email"),
    ("email-two-ats", post_json({"email": "ann@lee@example.com"}), 422, "invalid", "email"),
    ("email-sql", post_json({"email": "x'; DROP TABLE orders; --@x.io"}), 422, "invalid", "email"),
    ("email-sql-or", post_json({"email": "' OR '1'='1"}), 422, "invalid", "email"),
    ("email-html", post_json({"email": "<script>alert(1)</script>@x.io"}), 422, "invalid", "email"),
    ("email-crlf", post_json({"email": "ann@x.io\r\nBcc: all@x.io"}), 422, "invalid", "email"),
    ("email-nul", post_json({"email": "ann\x00@x.io"}), 422, "invalid", "email"),
    ("email-number", post_json({"email": 42}), 422, "invalid", "email"),
    ("email-list", post_json({"email": ["ann@example.com"]}), 422, "invalid", "email"),
    ("email-and-quantity-both-bad", post_json({"email": "x", "quantity": 0}), 422, "invalid",
     "quantity"),
    # bad Idempotency-Key headers
    ("idempotency-key-too-long", post_json(EMAIL, **{"Idempotency-Key": "k" * 129}), 422, "invalid",
     "Idempotency-Key"),
    ("idempotency-key-with-space", post_json(EMAIL, **{"Idempotency-Key": "a b"}), 422, "invalid",
     "Idempotency-Key"),
    # unknown, overflowing and path-like product ids
    ("product-unknown-slug", post_json(EMAIL, "/api/products/xbox/holds"), 404, "not_found", None),
    ("product-unknown-id", post_json(EMAIL, "/api/products/999/holds"), 404, "not_found", None),
    ("product-id-int32-overflow", post_json(EMAIL, "/api/products/2147483648/holds"), 404,
     "not_found", None),
    ("product-id-huge", post_json(EMAIL, "/api/products/" + "9" * 40 + "/holds"), 404, "not_found",
     None),
    ("product-id-negative", post_json(EMAIL, "/api/products/-1/holds"), 404, "not_found", None),
    ("product-id-unicode-digits", post_json(EMAIL, "/api/products/%D9%A1/holds"), 404, "not_found",
     None),
    ("product-path-traversal", post_json(EMAIL, "/api/products/..%2F..%2Fetc%2Fpasswd/holds"), 404,
     "not_found", None),
    ("product-dot-dot", post_json(EMAIL, "/api/products/%2E%2E/holds"), 404, "not_found", None),
    ("product-nul", post_json(EMAIL, "/api/products/ps5%00/holds"), 404, "not_found", None),
    ("product-sql", post_json(EMAIL, "/api/products/1%20OR%201=1/holds"), 404, "not_found", None),
    ("product-get-traversal", call("GET", "/api/products/..%2F..%2Fconfig.py"), 404, "not_found", None),
    # unknown and guessed hold ids
    ("hold-unknown-get", call("GET", f"/api/holds/{A_REAL_LOOKING_HOLD_ID}"), 404, "not_found", None),
    ("hold-unknown-confirm", call("POST", f"/api/holds/{A_REAL_LOOKING_HOLD_ID}/confirm"), 404,
     "not_found", None),
    ("hold-unknown-release", call("POST", f"/api/holds/{A_REAL_LOOKING_HOLD_ID}/release"), 404,
     "not_found", None),
    ("hold-guessed-sequential", call("POST", "/api/holds/1/confirm"), 404, "not_found", None),
    ("hold-guessed-sql", call("POST", "/api/holds/1%27%20OR%20%271%27=%271/release"), 404,
     "not_found", None),
    ("hold-id-huge", call("GET", "/api/holds/" + "A" * 5000), 404, "not_found", None),
    ("hold-id-traversal", call("GET", "/api/holds/..%2F..%2Fadmin%2Fmetrics"), 404, "not_found",
     None),
    # oversized bodies, wrong content types
    ("body-over-max-content-length",
     post_raw('{"email": "a@x.io", "pad": "' + "x" * (TestConfig.MAX_CONTENT_LENGTH + 1) + '"}'),
     413, "invalid", None),
    ("content-type-text-plain", post_raw('{"email": "a@x.io"}', "text/plain"), 422, "invalid", "body"),
    ("content-type-form", post_raw("email=a@x.io", "application/x-www-form-urlencoded"), 422,
     "invalid", "body"),
    ("content-type-missing", post_raw('{"email": "a@x.io"}', None), 422, "invalid", "body"),
    ("content-type-xml", post_raw("<email>a@x.io</email>", "application/xml"), 422, "invalid",
     "body"),
    # methods not allowed
    ("put-holds", call("PUT", HOLDS), 405, "invalid", None),
    ("delete-product", call("DELETE", "/api/products/ps5"), 405, "invalid", None),
    ("get-confirm", call("GET", f"/api/holds/{A_REAL_LOOKING_HOLD_ID}/confirm"), 405, "invalid",
     None),
    ("delete-hold", call("DELETE", f"/api/holds/{A_REAL_LOOKING_HOLD_ID}"), 405, "invalid", None),
    ("patch-hold", call("PATCH", f"/api/holds/{A_REAL_LOOKING_HOLD_ID}"), 405, "invalid", None),
    ("post-products-list", call("POST", "/api/products"), 405, "invalid", None),
]


FORM = "/products/ps5/hold"
GOOD_FORM = {"email": "ann@example.com", "quantity": "1", "idempotency_key": "web-form-key-0001"}


def post_form(**changes):
    data = {name: value for name, value in {**GOOD_FORM, **changes}.items() if value is not None}
    return {"method": "POST", "path": FORM, "data": data}


# The shop's web forms: (case id, request, status, error code shown on an error page or None).
FORM_CASES = [
    ("form-quantity-text", post_form(quantity="abc"), 422, None),
    ("form-quantity-float", post_form(quantity="1.5"), 422, None),
    ("form-quantity-zero", post_form(quantity="0"), 422, None),
    ("form-quantity-negative", post_form(quantity="-1"), 422, None),
    ("form-quantity-2-to-the-70", post_form(quantity=str(2**70)), 422, None),
    ("form-quantity-over-the-limit", post_form(quantity="3"), 422, None),
    ("form-quantity-empty", post_form(quantity=""), 422, None),
    ("form-quantity-missing", post_form(quantity=None), 422, None),
    ("form-email-missing", post_form(email=None), 422, None),
    ("form-email-empty", post_form(email=""), 422, None),
    ("form-email-too-long", post_form(email="a" * 300 + "@x.io"), 422, None),
    ("form-email-sql", post_form(email="x'; DROP TABLE orders; --"), 422, None),
    ("form-email-html", post_form(email="<script>alert(1)</script>@x.io"), 422, None),
    ("form-email-crlf", post_form(email="ann@x.io\r\nBcc: all@x.io"), 422, None),
    ("form-email-nul", post_form(email="ann\x00@x.io"), 422, None),
    ("form-idempotency-key-too-long", post_form(idempotency_key="k" * 300), 422, None),
    ("form-unknown-product", {**post_form(), "path": "/products/xbox/hold"}, 404, "not_found"),
    ("form-path-traversal", {**post_form(), "path": "/products/..%2F..%2Fetc/hold"}, 404, "not_found"),
    ("form-overflowing-id", {**post_form(), "path": "/products/99999999999999999999/hold"}, 404,
     "not_found"),
    ("form-oversized-body", post_form(pad="x" * (TestConfig.MAX_CONTENT_LENGTH + 1)), 413, "invalid"),
    ("form-get-not-allowed", call("GET", FORM), 405, "invalid"),
    ("form-confirm-unknown-hold", call("POST", f"/holds/{A_REAL_LOOKING_HOLD_ID}/confirm"), 404,
     "not_found"),
    ("form-release-guessed-hold", call("POST", "/holds/1/release"), 404, "not_found"),
    ("form-hold-page-guessed", call("GET", "/holds/2"), 404, "not_found"),
    ("form-confirm-by-get", call("GET", f"/holds/{A_REAL_LOOKING_HOLD_ID}/confirm"), 405, "invalid"),
]


@pytest.fixture(scope="module")
def limited_app(app):
    """A second app with rate limiting on (limits too high to trip); the global limiter is restored."""
    saved = dict(limiter.__dict__)
    yield create_app(TestConfig, RATELIMIT_ENABLED=True, RATELIMIT_HOLD_PER_ADDRESS="10000/second",
                     RATELIMIT_HOLD_PER_EMAIL="10000/second")
    limiter.__dict__.clear()
    limiter.__dict__.update(saved)


@pytest.fixture
def shop(app, make_product):
    """A live product and one real hold on it, so guessed ids have something to miss."""
    make_product(slug="ps5", total_stock=10, max_per_customer=2)
    with app.app_context():
        from flashsale.extensions import redis_store

        holds.place_hold(db.session, redis_store.client, "ps5", "owner@example.com", 1, HoldPolicy())
        db.session.remove()


def ledger_snapshot(app):
    """Every order and event, as plain tuples, to compare before and after."""
    with app.app_context():
        orders = db.session.execute(select(Order.id, Order.status, Order.quantity,
                                           Order.customer_email)).all()
        events = db.session.execute(select(InventoryEvent.id, InventoryEvent.type)).all()
        db.session.remove()
        return sorted(orders), sorted(events)


def send(client, request):
    request = dict(request)
    return client.open(request.pop("path"), method=request.pop("method"), **request)


@pytest.mark.parametrize(("request_", "status", "code", "field"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_request_gets_its_4xx_and_changes_nothing(app, limited_app, shop, request_, status,
                                                        code, field):
    before = ledger_snapshot(app)
    response = send(limited_app.test_client(), request_)
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.is_json
    error = response.json["error"]
    assert error["code"] == code and error["message"]
    if field:
        assert field in error["fields"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert ledger_snapshot(app) == before


def test_the_tables_have_at_least_forty_distinct_cases():
    ids = [case[0] for case in CASES + FORM_CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


def test_a_method_not_allowed_names_the_allowed_methods(app, limited_app):
    response = limited_app.test_client().put(HOLDS)
    assert response.status_code == 405 and "POST" in response.headers["Allow"]


def test_a_valid_email_with_a_quote_is_stored_verbatim_never_interpreted(app, limited_app, shop):
    """Quotes are legal in emails; parameterised queries store them as data."""
    response = limited_app.test_client().post(HOLDS, json={"email": "o'brien@example.com"})
    assert response.status_code == 201 and response.json["email"] == "o'brien@example.com"
    orders, _ = ledger_snapshot(app)
    assert len(orders) == 2


@pytest.mark.parametrize(("request_", "status", "code"), [case[1:] for case in FORM_CASES],
                         ids=[case[0] for case in FORM_CASES])
def test_a_bad_form_post_gets_its_4xx_page_and_changes_nothing(app, limited_app, shop, request_,
                                                               status, code):
    before = ledger_snapshot(app)
    response = send(limited_app.test_client(), request_)
    page = response.get_data(as_text=True)
    assert response.status_code == status, page[:300]
    assert response.mimetype == "text/html" and "Traceback" not in page
    if code:
        assert code in page
    assert ledger_snapshot(app) == before
