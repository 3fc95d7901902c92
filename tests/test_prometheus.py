"""GET /metrics (design section 14): Prometheus's text format from the shared Redis metrics, guarded like
the dashboard; a scrape parses, names follow Prometheus's conventions, and the hold counter moves by
exactly one per hold placed, whichever web process placed it and whichever one is scraped."""

import urllib.request
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from config import TestConfig
from flashsale import metrics
from flashsale.admin.prometheus import OUTCOME_LABELS
from flashsale.inventory import catalog
from flashsale.models import Product
from flashsale.worker import webhooks
from tests.faults import DATABASE_URL, hold
from tests.live_server import LiveServer, wait_until
from tests.paying import confirm_and_pay
from tests.webhook_receiver import SECRET, Receiver

TOKEN = "s3cret-token"


def parse(text):
    """{family name: {frozenset(labels): value}} of a scrape, plus each family's type."""
    found, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found, types


def value(found, name, **labels):
    return found[name][frozenset(labels.items())]


@pytest.fixture
def admin_token(app):
    app.config["ADMIN_TOKEN"] = TOKEN
    yield TOKEN
    app.config["ADMIN_TOKEN"] = None


def test_metrics_is_guarded_exactly_like_the_dashboards_metrics(client, admin_token):
    refused = [{}, {"headers": {"X-Admin-Token": "wrong"}}, {"headers": {"Authorization": "Bearer wrong"}},
               {"query_string": {"token": "wrong"}}, {"headers": {"Authorization": f"Basic {TOKEN}"}}]
    allowed = [{"headers": {"X-Admin-Token": TOKEN}}, {"headers": {"Authorization": f"Bearer {TOKEN}"}},
               {"query_string": {"token": TOKEN}}]
    for how in refused + allowed:
        answers = [client.get(path, **how).status_code for path in ("/admin/metrics", "/metrics")]
        assert answers == ([404, 404] if how in refused else [200, 200]), how
    # Refused, it reveals nothing: the same answer as a page that does not exist.
    nothing = client.get("/no-such-page")
    refusal = client.get("/metrics", headers={"X-Admin-Token": "wrong"})
    assert (refusal.status_code, refusal.data) == (nothing.status_code, nothing.data)


def test_without_an_admin_token_configured_metrics_is_open_like_the_dashboard(client):
    assert client.get("/admin/metrics").status_code == 200
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain; version=")


def test_a_scrape_parses_and_follows_prometheus_naming(app, client, make_product, session, monkeypatch):
    monkeypatch.setitem(app.config, "WAITING_ROOM_RATE", 0.001)  # nobody admitted while the test runs
    make_product(slug="ps5")
    line = make_product(slug="line", starts_in=timedelta(minutes=-1))
    session.execute(update(Product).where(Product.id == line).values(waiting_room=True))
    session.commit()
    catalog.forget()
    assert client.post("/api/products/line/queue", json={"email": "a@example.com"}).status_code == 201
    assert client.post("/api/products/line/queue", json={"email": "b@example.com"}).status_code == 201
    found, types = parse(client.get("/metrics").get_data(as_text=True))
    assert all(name.startswith("flashsale_") for name in found)
    for family, kind in types.items():
        if kind == "counter":
            assert f"{family}_total" in found, family
    assert {"flashsale_holds", "flashsale_confirmations", "flashsale_payments", "flashsale_queue_jobs",
            "flashsale_lock_wait_seconds", "flashsale_waiting_room_shoppers",
            "flashsale_waiting_room_admissions"} <= set(types)
    assert value(found, "flashsale_waiting_room_shoppers", product="line") == 2
    assert value(found, "flashsale_waiting_room_admissions_total", product="line") == 0
    assert {labels for labels in found["flashsale_queue_jobs"]} == {
        frozenset({("state", s)}) for s in ("queued", "scheduled", "failed")}
    assert value(found, "flashsale_holds_total", outcome="created") == 0


def test_every_outcome_the_app_records_is_exposed():
    assert set(OUTCOME_LABELS) == set(metrics.OUTCOMES)


def test_the_hold_counter_moves_by_exactly_one_per_hold_placed_across_processes(app, make_product):
    """Two web processes and a worker: after each hold placed, the scrapes (of whichever process answers)
    show created one higher within the batching interval, never more; a sold-out refusal moves sold_out,
    not created; a paid confirmation moves accepted and then captured by one each."""
    make_product(slug="drop", total_stock=4, max_per_customer=1)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=2, threads=4, with_worker=True,
                    ADMIN_TOKEN=TOKEN) as server:

        def scrape():
            request = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                return parse(answer.read().decode())[0]

        def created():
            return value(scrape(), "flashsale_holds_total", outcome="created")

        start = created()
        holds = []
        for i in range(4):
            answer = hold(server.url, "drop", f"b{i}@example.com")
            assert answer.status == 201
            holds.append(answer.body["id"])
            # The process that placed it writes its counts every METRICS_BATCH_SECONDS (0.25).
            wait_until(lambda n=start + i + 1: created() >= n, 10, message=f"hold {i + 1} in the scrape")
            assert created() == start + i + 1
        sold_out_before = value(scrape(), "flashsale_holds_total", outcome="sold_out")
        assert hold(server.url, "drop", "late@example.com").code == "sold_out"
        wait_until(lambda: value(scrape(), "flashsale_holds_total", outcome="sold_out") > sold_out_before, 10,
                   message="the refusal in the scrape")
        after = scrape()
        assert value(after, "flashsale_holds_total", outcome="created") == start + 4
        assert value(after, "flashsale_holds_total", outcome="sold_out") == sold_out_before + 1

        paid_before = value(after, "flashsale_payments_total", outcome="captured")
        confirm = urllib.request.Request(f"{server.url}/api/holds/{holds[0]}/confirm", method="POST")
        with urllib.request.urlopen(confirm, timeout=10) as answer:
            assert answer.status == 202
        wait_until(lambda: value(scrape(), "flashsale_payments_total", outcome="captured") == paid_before + 1,
                   30, message="the worker's capture in the scrape")
        final = scrape()
        assert value(final, "flashsale_confirmations_total", outcome="accepted") == 1
        assert value(final, "flashsale_confirmations_total", outcome="confirmed") == paid_before + 1


def test_webhook_deliveries_are_scraped_from_the_outbox(app, client, session, redis, shop, make_product,
                                                       monkeypatch):
    make_product(total_stock=5, max_per_customer=1)
    with Receiver() as receiver:
        monkeypatch.setitem(app.config, "WEBHOOK_ENDPOINTS", (receiver.url,))
        monkeypatch.setitem(app.config, "WEBHOOK_SECRET", SECRET)
        for n in range(2):
            confirm_and_pay(session, redis, shop.place(f"b{n}@x.io").id)
        found, _ = parse(client.get("/metrics").get_data(as_text=True))
        assert value(found, "flashsale_webhook_deliveries", state="delivered") == 0
        assert webhooks.deliver_webhooks() == 2
        found, _ = parse(client.get("/metrics").get_data(as_text=True))
    assert value(found, "flashsale_webhook_deliveries", state="delivered") == 2
    assert value(found, "flashsale_webhook_deliveries", state="pending") == 0
    assert value(found, "flashsale_webhook_oldest_undelivered_seconds") == 0
