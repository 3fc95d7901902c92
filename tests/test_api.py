"""The JSON API contract (design sections 6 and 7): every endpoint and every failure row."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from config import TestConfig
from flashsale.extensions import db
from flashsale.models import InventoryEvent, Order
from tests.faults import fire
from tests.live_server import LiveServer, wait_until

HOLD_KEYS = {"id", "product_id", "email", "quantity", "status", "hold_expires_at", "created_at",
             "confirmation_requested_at", "confirmed_at"}
PRODUCT_KEYS = {"id", "slug", "name", "description", "price_cents", "currency", "total_stock", "available",
                "max_per_customer", "sale_starts_at", "sale_ends_at", "state", "waiting_room",
                "poll_seconds"}  # the server's pace for watchers: an extension of the contract


def rows(app):
    """(orders, events) row counts: a refusal must leave both unchanged."""
    with app.app_context():
        counts = tuple(db.session.execute(select(func.count()).select_from(m)).scalar_one()
                       for m in (Order, InventoryEvent))
        db.session.remove()
        return counts


def hold(client, slug="ps5", email="ann@example.com", quantity=None, key=None):
    body = {"email": email} if quantity is None else {"email": email, "quantity": quantity}
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(f"/api/products/{slug}/holds", json=body, headers=headers)


def assert_error(response, status, code):
    assert response.status_code == status, response.get_json()
    assert response.is_json and response.json["error"]["code"] == code
    assert response.json["error"]["message"]


def test_products_list_and_detail_by_id_or_slug(client, make_product):
    make_product(slug="ps5", total_stock=100)
    make_product(slug="soon", starts_in=timedelta(minutes=10))
    listed = client.get("/api/products").json["products"]
    assert [p["slug"] for p in listed] == ["ps5", "soon"]
    assert set(listed[0]) == PRODUCT_KEYS
    assert [p["state"] for p in listed] == ["live", "upcoming"]
    by_slug, by_id = client.get("/api/products/ps5").json, client.get("/api/products/1").json
    assert by_slug == by_id and by_slug["available"] == 100
    assert by_slug["sale_starts_at"].endswith("Z")


def test_a_hold_is_201_with_the_contract_shape_and_stock_drops(client, make_product):
    make_product(total_stock=5, max_per_customer=2)
    response = hold(client, quantity=2)
    assert response.status_code == 201 and set(response.json) == HOLD_KEYS
    assert response.json["status"] == "PENDING" and response.json["quantity"] == 2
    assert client.get("/api/products/ps5").json["available"] == 3
    assert client.get(f"/api/holds/{response.json['id']}").json == response.json


def test_quantity_defaults_to_one(client, make_product):
    make_product()
    assert hold(client).json["quantity"] == 1


@pytest.mark.parametrize("body, field", [
    ({"email": "nope", "quantity": 1}, "email"),
    ({"email": "a@x.io", "quantity": "1"}, "quantity"),
    ({"email": "a@x.io", "quantity": 0}, "quantity"),
    ({"quantity": 1}, "email"),
    ({"email": "a@x.io", "colour": "red"}, "colour"),
])
def test_invalid_fields_are_422_with_per_field_messages(app, client, make_product, body, field):
    make_product()
    before = rows(app)
    response = client.post("/api/products/ps5/holds", json=body)
    assert_error(response, 422, "invalid")
    assert field in response.json["error"]["fields"]
    assert rows(app) == before


@pytest.mark.parametrize("data, content_type", [
    ("{not json", "application/json"), ("[1, 2]", "application/json"), ("email=a@x.io", "text/plain"),
])
def test_malformed_json_is_422_invalid(app, client, make_product, data, content_type):
    make_product()
    response = client.post("/api/products/ps5/holds", data=data, content_type=content_type)
    assert_error(response, 422, "invalid")
    assert rows(app) == (0, 0)


def test_unknown_product_or_hold_is_404(client, make_product):
    make_product()
    assert_error(hold(client, slug="xbox"), 404, "not_found")
    assert_error(client.get("/api/products/9999"), 404, "not_found")
    for path in ("/api/holds/AAAAAAAAAAAAAAAAAAAAAAAA", "/api/holds/AAAAAAAAAAAAAAAAAAAAAAAA/confirm",
                 "/api/holds/AAAAAAAAAAAAAAAAAAAAAAAA/release"):
        response = client.get(path) if path.count("/") == 3 else client.post(path)
        assert_error(response, 404, "not_found")


@pytest.mark.parametrize("starts_in, duration", [(timedelta(minutes=5), timedelta(hours=1)),
                                                  (timedelta(hours=-3), timedelta(hours=1))])
def test_a_sale_not_open_is_409(app, client, make_product, starts_in, duration):
    make_product(starts_in=starts_in, duration=duration)
    assert_error(hold(client), 409, "sale_not_open")
    assert rows(app) == (0, 0)


def test_not_enough_stock_is_409_sold_out(app, client, make_product):
    make_product(total_stock=1)
    assert hold(client).status_code == 201
    before = rows(app)
    assert_error(hold(client, email="bob@example.com"), 409, "sold_out")
    assert_error(hold(client, email="cy@example.com"), 409, "sold_out")  # the fast path this time
    assert rows(app) == before
    assert client.get("/api/products/ps5").json["state"] == "sold_out"


def test_per_customer_limit_is_409_limit_exceeded(app, client, make_product):
    make_product(total_stock=10, max_per_customer=1)
    assert hold(client).status_code == 201
    before = rows(app)
    assert_error(hold(client, email="ANN@example.com"), 409, "limit_exceeded")
    assert rows(app) == before


def test_confirm_is_202_confirming_then_200_while_paying_and_once_confirmed(app, client, make_product):
    from flashsale.worker.jobs import take_payment

    make_product(total_stock=1)
    hold_id = hold(client).json["id"]
    accepted = client.post(f"/api/holds/{hold_id}/confirm")
    assert accepted.status_code == 202 and accepted.json["status"] == "CONFIRMING"
    assert accepted.json["confirmation_requested_at"] < accepted.json["hold_expires_at"]
    again = client.post(f"/api/holds/{hold_id}/confirm")  # a second click: the promise stands
    assert again.status_code == 200 and again.json["status"] == "CONFIRMING"
    assert client.get("/api/products/ps5").json["available"] == 0  # a paying hold keeps its units
    assert_error(client.post(f"/api/holds/{hold_id}/release"), 409, "payment_in_progress")
    with app.app_context():
        assert take_payment(hold_id) == "confirmed"  # what the worker runs
    done = client.post(f"/api/holds/{hold_id}/confirm")
    assert done.status_code == 200 and done.json["status"] == "CONFIRMED" and done.json["confirmed_at"]
    assert_error(client.post(f"/api/holds/{hold_id}/release"), 409, "hold_confirmed")


def test_a_hold_carries_its_payment_once_accepted_with_the_fake_gateway(app, client, make_product):
    from flashsale.worker.jobs import take_payment

    make_product(total_stock=2, max_per_customer=2)
    paid, refused = hold(client).json["id"], hold(client, email="broke+refuse@example.com").json["id"]
    assert "payment" not in client.get(f"/api/holds/{paid}").json  # nothing accepted yet
    accepted = client.post(f"/api/holds/{paid}/confirm").json["payment"]
    assert accepted == {"status": "processing", "reference": None, "client_secret": None,
                        "action_deadline": None, "error": None}
    client.post(f"/api/holds/{refused}/confirm")
    with app.app_context():
        assert take_payment(paid) == "confirmed" and take_payment(refused) == "refused"
    captured = client.get(f"/api/holds/{paid}").json["payment"]
    assert captured["status"] == "captured" and captured["reference"].startswith("fake_ch_")
    assert client.get(f"/api/holds/{refused}").json["payment"]["status"] == "refused"


def test_a_confirm_body_may_only_name_a_payment_method(client, make_product):
    make_product()
    hold_id = hold(client).json["id"]
    for body, field in (({"card": "4242"}, "card"), ({"payment_method": "4242424242424242"}, "payment_method"),
                        ({"payment_method": 42}, "payment_method")):
        answer = client.post(f"/api/holds/{hold_id}/confirm", json=body)
        assert_error(answer, 422, "invalid")
        assert field in answer.json["error"]["fields"]
    assert client.get(f"/api/holds/{hold_id}").json["status"] == "PENDING"  # unchanged
    # With the fake gateway a payment method is not needed, and not used.
    assert client.post(f"/api/holds/{hold_id}/confirm", json={"payment_method": "pm_card_visa"}).status_code == 202


def test_confirm_after_expiry_is_409_hold_expired(app, client, make_product):
    make_product()
    hold_id = hold(client).json["id"]
    with app.app_context():
        db.session.execute(update(Order).values(hold_expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        db.session.commit()
    before = rows(app)
    assert_error(client.post(f"/api/holds/{hold_id}/confirm"), 409, "hold_expired")
    assert_error(client.post(f"/api/holds/{hold_id}/release"), 409, "hold_expired")
    assert rows(app) == before


def test_release_is_200_and_gives_stock_back_at_once(client, make_product):
    make_product(total_stock=1)
    hold_id = hold(client).json["id"]
    released = client.post(f"/api/holds/{hold_id}/release")
    assert released.status_code == 200 and released.json["status"] == "RELEASED"
    assert client.get("/api/products/ps5").json["available"] == 1
    assert_error(client.post(f"/api/holds/{hold_id}/confirm"), 409, "hold_released")
    assert hold(client, email="next@example.com").status_code == 201


def test_idempotent_replay_is_200_same_hold_and_another_body_is_422(app, client, make_product):
    make_product(total_stock=5, max_per_customer=2)
    first = hold(client, key="order-123")
    replay = hold(client, key="order-123")
    assert first.status_code == 201 and replay.status_code == 200 and replay.json == first.json
    before = rows(app)
    assert_error(hold(client, quantity=2, key="order-123"), 422, "idempotency_mismatch")
    assert rows(app) == before


def test_lock_not_acquired_in_time_is_503_with_retry_after(app, client, make_product):
    from flashsale.inventory.locks import ProductLock

    make_product()
    app.config["LOCK_WAIT_MS"] = 50
    try:
        with app.app_context():
            from flashsale.extensions import redis_store

            with ProductLock(redis_store.client, 1, ttl_ms=5000, wait_ms=0):
                response = hold(client)
    finally:
        app.config["LOCK_WAIT_MS"] = TestConfig.LOCK_WAIT_MS
    assert_error(response, 503, "unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    assert rows(app) == (0, 0)


def test_postgresql_down_is_503_with_retry_after(app, make_product):
    from flashsale import create_app

    make_product()
    broken = create_app(TestConfig, SQLALCHEMY_DATABASE_URI="postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")
    response = broken.test_client().post("/api/products/ps5/holds", json={"email": "a@x.io"})
    assert_error(response, 503, "unavailable")
    assert response.headers["Retry-After"]
    health = broken.test_client().get("/healthz")
    assert health.status_code == 503 and health.json == {"database": "down", "redis": "ok"}
    assert rows(app) == (0, 0)


def test_healthz_is_200_when_both_answer(client):
    assert client.get("/healthz").json == {"database": "ok", "redis": "ok"}


def test_admin_metrics_counts_what_happened(client, make_product):
    make_product(total_stock=1)
    hold(client)
    hold(client, email="late@example.com")
    metrics = client.get("/admin/metrics").json
    assert metrics["totals"]["created"] == 1 and metrics["totals"]["sold_out"] == 1
    assert metrics["products"][0]["available"] == 0


def test_too_many_requests_is_429_with_retry_after_across_processes(app, make_product):
    """Two web server processes share one limit through Redis: the sixth request from one address is 429."""
    make_product(slug="limited", total_stock=100, max_per_customer=1)
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=2, threads=4,
                    RATELIMIT_ENABLED="true", RATELIMIT_HOLD_PER_ADDRESS="5/minute",
                    RATELIMIT_HOLD_PER_EMAIL="100/minute") as server:
        requests = [("/api/products/limited/holds", {"email": f"r{i}@example.com"}, None) for i in range(8)]
        answers = asyncio.run(fire(server.url, requests, concurrency=1))
        statuses = [status for status, _ in answers]
        assert statuses[:5] == [201] * 5 and statuses[5:] == [429] * 3
        assert {body["error"]["code"] for _, body in answers[5:]} == {"rate_limited"}
        limited = asyncio.run(_post_headers(server.url + "/api/products/limited/holds"))
        assert limited[0] == 429 and int(limited[1]["Retry-After"]) >= 1
    wait_until(lambda: rows(app)[0] == 5, 5, message="exactly the five admitted holds")


async def _post_headers(url):
    import aiohttp

    async with aiohttp.ClientSession() as client, client.post(url, json={"email": "z@example.com"}) as response:
        return response.status, dict(response.headers)


def test_releasing_twice_counts_one_release(client, make_product):
    make_product()
    hold_id = hold(client).json["id"]
    assert client.post(f"/api/holds/{hold_id}/release").status_code == 200
    assert client.post(f"/api/holds/{hold_id}/release").status_code == 200
    assert client.get("/admin/metrics").json["totals"]["released"] == 1


def test_livez_answers_200_while_redis_and_postgresql_are_both_away():
    """The load balancer's check: a live server stays in rotation through a Redis failover (its requests
    answer 503 + Retry-After themselves) while /healthz reports the outage."""
    from flashsale import create_app
    from tests.live_server import free_port

    broken = create_app(TestConfig, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", REDIS_SOCKET_TIMEOUT=0.5,
                        SQLALCHEMY_DATABASE_URI="postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")
    live = broken.test_client().get("/livez")
    assert live.status_code == 200 and live.json == {"status": "live"}
    health = broken.test_client().get("/healthz")
    assert health.status_code == 503 and health.json == {"database": "down", "redis": "down"}
