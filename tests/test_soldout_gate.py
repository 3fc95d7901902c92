"""The sold-out gate answers exactly as Flask would, in one Redis round trip, and hands everything else
to Flask untouched (flashsale/gates/sold_out.py)."""

import asyncio
import re

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from config import TestConfig
from flashsale import keys
from flashsale.extensions import db, redis_store
from flashsale.gates import sold_out as gate
from flashsale.inventory import catalog
from tests.faults import fire
from tests.live_server import LiveServer

# Counters that outlive a window's reset would make two runs differ; an hour and a day never roll
# over within a test (fixed windows start at their first hit).
LIMITS = {"RATELIMIT_ENABLED": True, "RATELIMIT_HOLD_PER_ADDRESS": "5/hour;7/day",
          "RATELIMIT_HOLD_PER_EMAIL": "2/hour;3/day"}


@pytest.fixture
def limited(app_with_limits):
    """An app with the rate limits on (and its own limiter state)."""
    return app_with_limits(**LIMITS)


@pytest.fixture
def sold_out(limited, make_product):
    """A product whose only unit is held, so it is marked sold out; its slug."""
    make_product(slug="gone", total_stock=1, max_per_customer=2)
    first = limited.test_client().post("/api/products/gone/holds", json={"email": "winner@example.com"},
                                       environ_base={"REMOTE_ADDR": "10.9.9.9"}, headers={"Idempotency-Key": "won-1"})
    assert first.status_code == 201
    with limited.app_context():
        assert redis_store.client.exists(keys.sold_out(catalog.sale_info(db.session, "gone").id))
    return "gone"


# (email, address, quantity): the same email over its limit, an address over its limit, a
# different quantity, a mixed-case email that counts as the same buyer.
SEQUENCE = [("a@example.com", "10.0.0.1", 1), ("a@example.com", "10.0.0.1", 2), ("A@Example.com ", "10.0.0.2", 1),
            ("a@example.com", "10.0.0.3", 1), ("b@example.com", "10.0.0.4", 1), ("c@example.com", "10.0.0.4", 1),
            ("d@example.com", "10.0.0.4", 1), ("e@example.com", "10.0.0.4", 1), ("f@example.com", "10.0.0.4", 1),
            ("g@example.com", "10.0.0.4", 1), ("h@example.com", "10.0.0.5", 1)]


def run_sequence(app, slug, gate):
    """Every SEQUENCE request with the gate on or off: answers, limit counters, metrics totals."""
    app.config["SOLD_OUT_GATE"] = gate
    client = app.test_client()
    answers = []
    for email, address, quantity in SEQUENCE:
        response = client.post(f"/api/products/{slug}/holds", json={"email": email, "quantity": quantity},
                               environ_base={"REMOTE_ADDR": address})
        answers.append((response.status_code, response.get_data(), dict(response.headers)))
    with app.app_context():
        redis = redis_store.client
        counters = {key.decode(): int(redis.get(key)) for key in redis.keys("fs:holdlimit:*")}
        ttls = {key.decode(): redis.ttl(key) for key in redis.keys("fs:holdlimit:*")}
        totals = {k.decode(): int(v) for k, v in redis.hgetall("fs:metrics:totals").items()}
        latencies = redis.llen("fs:metrics:latency")
        # Start the other run from the same state: the winner's counters and metrics only.
        for key in redis.keys("fs:holdlimit:*") + redis.keys("fs:metrics:*"):
            redis.delete(key)
    return answers, counters, ttls, totals, latencies


def comparable(headers):
    """Headers without the values that move with the clock, and the request's own id (checked separately)."""
    return {k: v for k, v in headers.items() if k not in ("X-RateLimit-Reset", "Retry-After", "X-Request-Id")}


def test_the_gate_gives_every_answer_flask_gives_with_the_same_counters_and_metrics(limited, sold_out):
    with limited.app_context():
        for key in redis_store.client.keys("fs:holdlimit:*") + redis_store.client.keys("fs:metrics:*"):
            redis_store.client.delete(key)
    through_flask = run_sequence(limited, sold_out, gate=False)
    through_gate = run_sequence(limited, sold_out, gate=True)
    flask_answers, gate_answers = through_flask[0], through_gate[0]
    statuses = [status for status, _, _ in flask_answers]
    assert 409 in statuses and 429 in statuses  # the sequence covers both answers
    for (f_status, f_body, f_headers), (g_status, g_body, g_headers) in zip(flask_answers, gate_answers,
                                                                           strict=True):
        assert (g_status, g_body) == (f_status, f_body)
        assert comparable(g_headers) == comparable(f_headers)
        assert g_headers["X-Request-Id"] != f_headers["X-Request-Id"]  # each answer names its own request
        assert abs(int(g_headers["X-RateLimit-Reset"]) - int(f_headers["X-RateLimit-Reset"])) <= 2
        assert ("Retry-After" in g_headers) == ("Retry-After" in f_headers) == (f_status == 429)
        if f_status == 429:
            assert abs(int(g_headers["Retry-After"]) - int(f_headers["Retry-After"])) <= 2
    assert through_gate[1] == through_flask[1]  # the same limit counters under the same keys
    assert all(abs(through_gate[2][k] - t) <= 2 for k, t in through_flask[2].items())
    assert through_gate[3] == through_flask[3] and through_gate[3]["sold_out"] == statuses.count(409)
    assert through_gate[4] == through_flask[4] == statuses.count(409)  # one latency sample per refusal
    ids = [headers["X-Request-Id"] for _, _, headers in flask_answers + gate_answers]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_holds_placed_behind_the_gate_are_limited_as_flask_limits_them(limited, make_product):
    """Buyers of a product with stock: the gate counts their limits, the hold gate places their holds."""
    make_product(slug="one", total_stock=50, max_per_customer=3)
    make_product(slug="two", total_stock=50, max_per_customer=3)
    limited.test_client().get("/api/products/two")  # cached: the gate counts this product's buyers
    through_flask = run_sequence(limited, "one", gate=False)
    through_gate = run_sequence(limited, "two", gate=True)
    statuses = [status for status, _, _ in through_flask[0]]
    assert 201 in statuses and 429 in statuses
    assert [status for status, _, _ in through_gate[0]] == statuses
    for (status, f_body, f_headers), (_, g_body, g_headers) in zip(through_flask[0], through_gate[0], strict=True):
        if status != 201:
            assert g_body == f_body
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "Cache-Control", "Content-Type"):
            assert g_headers.get(name) == f_headers.get(name), name
        assert ("Retry-After" in g_headers) == ("Retry-After" in f_headers) == (status == 429)
        if status == 429:
            assert abs(int(g_headers["Retry-After"]) - int(f_headers["Retry-After"])) <= 2
    assert through_gate[1] == through_flask[1]  # the same counters: each request counted once
    assert through_gate[3] == through_flask[3]  # the same outcomes in the metrics


def test_a_sold_out_answer_is_one_redis_round_trip_and_never_reaches_flask(limited, sold_out, monkeypatch):
    client = limited.test_client()
    body = {"email": "late@example.com"}
    assert client.post(f"/api/products/{sold_out}/holds", json=body).status_code == 409  # warm: script loaded
    sent = []
    with limited.app_context():  # TCP or a unix socket (the embedded Redis): the class the client uses
        connection_class = redis_store.client.connection_pool.connection_class
    original = connection_class.send_command
    monkeypatch.setattr(connection_class, "send_command",
                        lambda self, *a, **k: sent.append(a[0]) or original(self, *a, **k))
    monkeypatch.setattr(limited, "full_dispatch_request", lambda: pytest.fail("Flask dispatched the request"))
    response = client.post(f"/api/products/{sold_out}/holds", json={"email": "later@example.com"})
    assert response.status_code == 409 and response.json["error"]["code"] == "sold_out"
    assert sent == ["EVALSHA"]
    assert response.headers["Cache-Control"] == "no-store" and response.headers["X-RateLimit-Limit"] == "2"


def test_a_product_with_stock_is_passed_on_and_its_limits_are_counted_once(limited, make_product):
    make_product(slug="live", total_stock=5)
    client = limited.test_client()
    client.get("/api/products/live")  # the product is in this process's cache: the gate runs its script
    response = client.post("/api/products/live/holds", json={"email": "buyer@example.com"},
                           environ_base={"REMOTE_ADDR": "10.1.1.1"})
    assert response.status_code == 201
    with limited.app_context():
        counters = {k.decode(): int(redis_store.client.get(k)) for k in redis_store.client.keys("fs:holdlimit:*")}
    assert len(counters) == 4 and set(counters.values()) == {1}  # two limits x (email, address), once each


def test_what_flask_must_answer_passes_the_gate_with_its_body(limited, sold_out):
    client = limited.test_client()
    path = f"/api/products/{sold_out}/holds"
    bad = client.post(path, json={"email": "not-an-email"})
    assert bad.status_code == 422 and "email" in bad.json["error"]["fields"]
    unknown = client.post(path, json={"email": "x@example.com", "colour": "red"})
    assert unknown.status_code == 422 and "colour" in unknown.json["error"]["fields"]
    # An Idempotency-Key may name a hold made before the sale sold out: Flask replays it.
    replay = client.post(path, json={"email": "winner@example.com"}, headers={"Idempotency-Key": "won-1"},
                         environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert replay.status_code == 200 and replay.json["status"] == "PENDING"
    over_limit = client.post(path, json={"email": "y@example.com", "quantity": 3})
    assert over_limit.status_code == 409 and over_limit.json["error"]["code"] == "limit_exceeded"


def test_a_redis_error_in_the_gate_hands_the_request_to_flask(limited, sold_out, monkeypatch):
    def refuse(*args, **kwargs):
        raise RedisConnectionError("gone")

    monkeypatch.setattr(gate._connection, "run", refuse)
    response = limited.test_client().post(f"/api/products/{sold_out}/holds", json={"email": "z@example.com"})
    assert response.status_code == 409 and response.json["error"]["code"] == "sold_out"
    with limited.app_context():
        assert int(redis_store.client.hget("fs:metrics:totals", "sold_out")) == 1  # counted once, by Flask


def test_a_product_this_process_has_not_read_goes_to_flask(limited, sold_out, monkeypatch):
    catalog.forget()
    calls = []
    original = limited.full_dispatch_request
    monkeypatch.setattr(limited, "full_dispatch_request", lambda: calls.append(1) or original())
    response = limited.test_client().post(f"/api/products/{sold_out}/holds", json={"email": "q@example.com"})
    assert response.status_code == 409 and calls == [1]
    assert catalog.cached_sale_info(sold_out) is not None  # Flask read it: the next buyer is gated


def test_a_burst_on_the_production_server_counts_every_refusal_once(app, make_product):
    make_product(slug="burst", total_stock=10)
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=2, threads=8,
                    RATELIMIT_ENABLED="true", RATELIMIT_HOLD_PER_ADDRESS="10000/second",
                    RATELIMIT_HOLD_PER_EMAIL="10000/second") as server:
        requests = [("/api/products/burst/holds", {"email": f"b{i}@example.com"}, None) for i in range(400)]
        answers = asyncio.run(fire(server.url, requests))
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 10
    assert {body["error"]["code"] for status, body in answers if status != 201} <= {"sold_out", "unavailable"}
    with app.app_context():
        totals = {k.decode(): int(v) for k, v in redis_store.client.hgetall("fs:metrics:totals").items()}
    assert totals["created"] == 10 and totals["sold_out"] == statuses.count(409)


def test_the_gate_loads_its_script_again_after_redis_forgets_it(limited, sold_out):
    client = limited.test_client()
    assert client.post(f"/api/products/{sold_out}/holds", json={"email": "one@example.com"}).status_code == 409
    with limited.app_context():
        redis_store.client.script_flush()
        response = client.post(f"/api/products/{sold_out}/holds", json={"email": "two@example.com"})
        assert response.status_code == 409
        assert int(redis_store.client.hget("fs:metrics:totals", "sold_out")) == 2


def test_an_expired_product_read_sends_one_buyer_through_flask_while_it_is_read_again(monkeypatch):
    import time as clock

    from flashsale.inventory.catalog import SaleInfo

    catalog.forget()
    info = SaleInfo(1, "p", 1, 1, None, None)
    now = [1000.0]
    monkeypatch.setattr(clock, "monotonic", lambda: now[0])
    catalog._cache["p"] = (now[0] + catalog.CACHE_SECONDS, info)
    assert catalog.cached_sale_info("p") is info
    now[0] += catalog.CACHE_SECONDS + 0.1  # the read expired
    assert catalog.cached_sale_info("p") is None  # this buyer goes through Flask, which reads it again
    assert catalog.cached_sale_info("p") is info  # the others keep the old read meanwhile
    now[0] += catalog.REFRESH_GRACE + 0.1  # no new read landed within the grace
    assert catalog.cached_sale_info("p") is None
    catalog.forget()
