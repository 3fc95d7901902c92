"""The poll gate answers watchers' polls exactly as Flask would, without Flask, and hands Flask the rest
(flashsale/gates/polls.py)."""

import json
import re

import pytest

from flashsale import keys
from flashsale.extensions import redis_store
from flashsale.inventory import catalog, snapshot

POLLS = ["/api/products/ps5", "/products/ps5/stock"]


def answer(client, path, **headers):
    response = client.get(path, headers=headers)
    return response.status_code, response.get_data(), dict(response.headers)


def comparable(body):
    """A poll's JSON without the server's clock (it moves between two polls)."""
    data = json.loads(body)
    data.pop("server_time", None)
    return data


@pytest.mark.parametrize("path", POLLS)
def test_the_gate_answers_a_poll_as_flask_does_and_flask_never_sees_it(app, client, make_product, monkeypatch,
                                                                      path):
    make_product(total_stock=7)
    app.config["POLL_GATE"] = False
    try:
        f_status, f_body, f_headers = answer(client, path)  # Flask resolves the product, builds the snapshot
        f_304 = answer(client, path, **{"If-None-Match": f_headers["ETag"]})
    finally:
        app.config["POLL_GATE"] = True
    monkeypatch.setattr(app, "full_dispatch_request", lambda: pytest.fail("Flask answered the poll"))
    g_status, g_body, g_headers = answer(client, path)
    assert (g_status, comparable(g_body)) == (f_status, comparable(f_body)) == (200, comparable(f_body))
    assert comparable(g_body)["available"] == 7
    # Every answer has its own request id (web/logs.py), the gate's as Flask's; the rest is the same.
    ids = {headers["X-Request-Id"] for headers in (f_headers, f_304[2], g_headers)}
    assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert g_headers == f_headers | {"Content-Length": g_headers["Content-Length"],
                                     "X-Request-Id": g_headers["X-Request-Id"]}
    g_304 = answer(client, path, **{"If-None-Match": g_headers["ETag"]})
    assert (g_304[0], g_304[1]) == (f_304[0], f_304[1]) == (304, b"")
    assert g_304[2]["X-Request-Id"] not in ids
    assert {k: v for k, v in g_304[2].items() if k not in ("Content-Length", "X-Request-Id")} == \
        {k: v for k, v in f_304[2].items() if k not in ("Content-Length", "X-Request-Id")}


def test_a_movement_shows_in_the_gates_next_answer(app, client, make_product):
    make_product(total_stock=3, max_per_customer=2)
    assert json.loads(client.get("/api/products/ps5").data)["available"] == 3
    assert client.post("/api/products/ps5/holds", json={"email": "m@x.io", "quantity": 2}).status_code == 201
    body = json.loads(client.get("/products/ps5/stock").data)  # answered by the gate
    assert (body["available"], body["state"]) == (1, "live")


def test_what_needs_the_database_goes_to_flask(app, client, make_product, monkeypatch):
    make_product(total_stock=4)
    calls = []
    original = app.full_dispatch_request
    monkeypatch.setattr(app, "full_dispatch_request", lambda: calls.append(1) or original())
    assert client.get("/api/products/ps5").status_code == 200 and calls == [1]  # id not resolved yet
    assert client.get("/api/products/ps5").status_code == 200 and calls == [1]  # the gate
    with app.app_context():
        product_id = catalog.cached_product_id("ps5")
        redis_store.client.delete(keys.stock_snapshot(product_id))  # Redis lost it
        snapshot.forget_shared()
    assert json.loads(client.get("/api/products/ps5").data)["available"] == 4 and calls == [1, 1]  # rebuilt
    assert client.get("/api/products/no-such").status_code == 404 and calls == [1, 1, 1]
    assert client.get("/api/products/ps5?x=1").status_code == 200 and len(calls) == 4  # a query: Flask's
