"""The hold gate places the buyers the sold-out gate passed on, answering exactly as the view would, and
hands every refusal and error it meets to Flask, which answers it as the view does (gates/holds.py)."""

import json
import re

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from flashsale.api import routes
from flashsale.extensions import db, redis_store
from flashsale.inventory import batches, catalog
from flashsale.models import Order

LIMITS = {"RATELIMIT_ENABLED": True, "RATELIMIT_HOLD_PER_ADDRESS": "50/hour;70/day",
          "RATELIMIT_HOLD_PER_EMAIL": "20/hour;30/day"}
# Values that move with the clock, the hold's id or the request's own id.
MOVING = ("X-RateLimit-Reset", "Retry-After", "X-Request-Id", "Content-Length")


@pytest.fixture
def limited(app_with_limits):
    """An app with the rate limits on (and its own limiter state)."""
    return app_with_limits(**LIMITS)


@pytest.fixture
def views(monkeypatch):
    """Counts the requests that reached the hold view (its first call: is there an outcome to raise)."""
    calls = []
    original = routes.hold_gate.outcome
    monkeypatch.setattr(routes.hold_gate, "outcome", lambda environ: calls.append(1) or original(environ))
    return calls


def buy(app, slug, buyers, gate):
    """POST each (email, quantity, address) with the hold gate on or off: [(status, body, headers)]."""
    app.config["HOLD_GATE"] = gate
    client = app.test_client()
    with app.app_context():  # this process has read the product: the sold-out gate looks at its buyers
        catalog.sale_info(db.session, slug)
    answers = []
    for email, quantity, address in buyers:
        response = client.post(f"/api/products/{slug}/holds", json={"email": email, "quantity": quantity},
                               environ_base={"REMOTE_ADDR": address})
        answers.append((response.status_code, response.get_data(), dict(response.headers)))
    with app.app_context():  # the other run starts from the same limit counters
        for key in redis_store.client.keys("fs:holdlimit:*"):
            redis_store.client.delete(key)
    return answers


def metrics_totals(app):
    with app.app_context():
        return {k.decode(): int(v) for k, v in redis_store.client.hgetall("fs:metrics:totals").items()}


def same_shape(gated, flask):
    """A created hold's answer from the gate and from Flask: same status, headers and body but for the
    hold's own values (id, times), each of which is well formed."""
    (g_status, g_body, g_headers), (f_status, f_body, f_headers) = gated, flask
    assert g_status == f_status
    assert {k: v for k, v in g_headers.items() if k not in MOVING} == \
        {k: v for k, v in f_headers.items() if k not in MOVING}
    assert int(g_headers["Content-Length"]) == len(g_body)
    assert g_body.endswith(b"\n") and f_body.endswith(b"\n")  # the app's JSON provider, as jsonify
    g, f = json.loads(g_body), json.loads(f_body)
    assert list(g) == list(f)
    for key in ("id", "hold_expires_at", "created_at", "product_id"):
        g.pop(key), f.pop(key)
    assert g == f


def test_a_created_hold_is_answered_as_the_view_answers_it_without_reaching_flask(limited, make_product, views):
    make_product(slug="gated", total_stock=10, max_per_customer=2)
    make_product(slug="viewed", total_stock=10, max_per_customer=2)
    buyers = [("a@example.com", 1, "10.0.0.1"), ("b@example.com", 2, "10.0.0.2"), ("A@Example.com ", 1, "10.0.0.3")]
    through_gate = buy(limited, "gated", buyers, gate=True)
    assert views == []  # no request reached the view
    totals_gated = metrics_totals(limited)
    through_flask = buy(limited, "viewed", buyers, gate=False)
    assert len(views) == len(buyers)
    assert [status for status, _, _ in through_gate] == [201, 201, 201]
    for gated, flask in zip(through_gate, through_flask, strict=True):
        same_shape(gated, flask)
        assert re.fullmatch(r"[0-9a-f]{32}", gated[2]["X-Request-Id"])
    assert metrics_totals(limited)["created"] == 2 * totals_gated["created"] == 2 * len(buyers)
    with limited.app_context():  # every answered hold is in the database as answered
        for _, body, _ in through_gate:
            answer = json.loads(body)
            order = db.session.get(Order, answer["id"])
            assert (order.status, order.quantity, order.customer_email) == \
                   (answer["status"], answer["quantity"], answer["email"])


def test_a_refusal_decided_in_the_line_is_answered_by_flask_as_the_view_answers_it(limited, make_product, views):
    """The same email again: the sold-out gate cannot know it holds already; the line refuses it."""
    answers = {}
    for gate, slug in ((True, "gated"), (False, "viewed")):
        make_product(slug=slug, total_stock=10, max_per_customer=1)
        answers[gate] = buy(limited, slug, [("same@example.com", 1, "10.0.0.1")] * 2, gate)
    assert [status for status, _, _ in answers[True]] == [201, 409]
    same_shape(answers[True][0], answers[False][0])
    (g_status, g_body, g_headers), (f_status, f_body, f_headers) = answers[True][1], answers[False][1]
    assert (g_status, g_body) == (f_status, f_body)
    assert json.loads(g_body)["error"]["code"] == "limit_exceeded"
    assert {k: v for k, v in g_headers.items() if k not in MOVING} == \
        {k: v for k, v in f_headers.items() if k not in MOVING}
    assert views == [1, 1, 1]  # the refusal reached Flask; the gate's created hold did not
    assert metrics_totals(limited)["rejected"] == 2  # counted once each way


def test_an_outage_met_by_the_gate_is_flasks_503_with_retry_after_and_changes_nothing(limited, make_product,
                                                                                      monkeypatch):
    make_product(slug="down", total_stock=10)

    def unreachable(*args, **kwargs):
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(batches, "place", unreachable)
    for gate in (True, False):
        (status, body, headers), = buy(limited, "down", [(f"{gate}@example.com", 1, "10.0.0.9")], gate)
        assert status == 503 and headers["Retry-After"]
        assert json.loads(body)["error"]["code"] == "unavailable"
    with limited.app_context():
        assert db.session.query(Order).count() == 0


def test_a_bug_met_by_the_gate_is_flasks_500(limited, make_product, monkeypatch):
    make_product(slug="bug", total_stock=10)
    monkeypatch.setattr(batches, "place", lambda *a, **k: 1 / 0)
    (status, body, headers), = buy(limited, "bug", [("z@example.com", 1, "10.0.0.8")], gate=True)
    assert status == 500 and json.loads(body)["error"]["code"] == "internal"
