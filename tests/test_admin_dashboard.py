"""The admin dashboard and its metrics: what it shows, who may see it, and that its history stays bounded."""

import itertools
import re
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import update

from flashsale import metrics
from flashsale.extensions import db
from flashsale.models import Order
from flashsale.worker import jobs


def buy(client, email, slug="ps5", quantity=1):
    response = client.post(f"/api/products/{slug}/holds", json={"email": email, "quantity": quantity})
    assert response.status_code in (201, 409), response.json
    return response.json


@pytest.fixture
def admin_token(app):
    """Set ADMIN_TOKEN for one test (the admin blueprint reads it per request)."""
    app.config["ADMIN_TOKEN"] = "s3cret-token"
    yield "s3cret-token"
    app.config["ADMIN_TOKEN"] = None


def test_dashboard_page_shows_totals_queue_latency_products_and_charts(client, make_product):
    make_product(total_stock=3)
    buy(client, "ann@example.com")
    response = client.get("/admin/")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert re.search(r'data-metric="totals.created">1<', page)
    for metric in ("totals.sold_out", "totals.rate_limited", "totals.busy", "hold_latency_ms.p99",
                   "lock_wait_ms.p95", "queue.depth", "queue.workers", "queue.failed"):
        assert f'data-metric="{metric}"' in page
    for metric in ("payments.in_progress", "payments.oldest_seconds", "payment_latency_ms.p50",
                   "payment_latency_ms.p99", "totals.accepted", "totals.refunded", "totals.reconciled"):
        assert f'data-metric="{metric}"' in page
    for chart in ("chart-outcomes", "chart-payments", "chart-stock", "chart-latency"):
        assert f'<canvas id="{chart}"' in page
    assert re.search(r'data-col="available">2<', page) and re.search(r'data-col="held">1<', page)
    assert "/static/vendor/chartjs/chart.umd.min.js" in page and "/static/js/admin.js" in page
    assert 'data-poll-seconds="5"' in page


def test_emails_are_masked_on_admin_pages_and_metrics(client, make_product):
    make_product()
    buy(client, "annabel.lee@example.com")
    page = client.get("/admin/").get_data(as_text=True)
    body = client.get("/admin/metrics").get_data(as_text=True)
    for shown in (page, body):
        assert "annabel" not in shown and "a***@example.com" in shown


def test_metrics_per_product_row_counts_outcomes_and_conversion(app, client, make_product):
    make_product(total_stock=10)
    make_product(slug="other", total_stock=4)
    confirmed, expired, released, _held, paying = (buy(client, f"{n}@example.com")["id"] for n in "abcde")
    assert client.post(f"/api/holds/{paying}/confirm").status_code == 202
    assert client.post(f"/api/holds/{confirmed}/confirm").status_code == 202
    with app.app_context():
        assert jobs.take_payment(confirmed) == "confirmed"
        db.session.execute(update(Order).where(Order.id == expired).values(
            hold_expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))  # lapsed, not yet recorded
        db.session.commit()
    client.post(f"/api/holds/{released}/release")
    rows = {p["slug"]: p for p in client.get("/admin/metrics").json["products"]}
    assert rows["ps5"] | {"id": None} == {
        "id": None, "slug": "ps5", "name": "PS5", "total": 10, "available": 7, "held": 1, "paying": 1,
        "confirmed": 1, "expired": 1, "released": 1, "holds": 5, "confirmed_holds": 1, "conversion_rate": 0.2}
    assert rows["other"]["conversion_rate"] is None and rows["other"]["available"] == 4
    board = client.get("/admin/metrics").json
    assert board["payments"]["in_progress"] == 1 and board["payments"]["oldest_seconds"] >= 0
    assert (board["totals"]["accepted"], board["totals"]["confirmed"]) == (2, 1)
    assert board["payment_latency_ms"]["p50"] is not None
    assert board["gauges"][-1]["payment"]["p50"] == board["payment_latency_ms"]["p50"]


def test_metrics_carry_series_queue_latency_and_server_time(client, make_product):
    make_product(total_stock=1)
    buy(client, "a@example.com")
    buy(client, "b@example.com")
    board = client.get("/admin/metrics").json
    assert board["totals"]["created"] == 1 and board["totals"]["sold_out"] == 1
    assert len(board["series"]) == metrics.WINDOW_BUCKETS
    assert sum(b.get("created", 0) for b in board["series"]) == 1
    assert set(board["queue"]) == {"depth", "scheduled", "failed", "workers"}
    assert board["queue"]["scheduled"] == 1  # the hold's expiry job
    assert board["hold_latency_ms"]["p50"] is not None and board["server_time"].endswith("Z")


def test_reading_metrics_samples_stock_per_product_into_a_bounded_series(app, client, make_product, redis):
    product_id = make_product(total_stock=5)
    client.get("/admin/metrics")
    buy(client, "a@example.com")
    board = client.get("/admin/metrics").json
    assert len(board["gauges"]) == metrics.WINDOW_BUCKETS
    latest = board["gauges"][-1]
    assert latest["stock"] == {str(product_id): 4} and latest["latency"]["p50"] is not None
    gauge_keys = redis.keys("fs:metrics:gauges:*")
    assert gauge_keys and all(0 < redis.ttl(k) <= metrics.BUCKET_SECONDS * metrics.WINDOW_BUCKETS
                              for k in gauge_keys)


def test_one_reading_of_the_board_uses_one_bucket_even_across_a_boundary(client, make_product, monkeypatch):
    """The board's sample and its series are read at one instant: with a clock that had the sample land
    in one bucket and the series end in the next, the latest point showed no stock (CI saw it once)."""
    product_id = make_product(total_stock=5)
    start = (int(time.time()) // metrics.BUCKET_SECONDS) * metrics.BUCKET_SECONDS + 1
    readings = itertools.count(start, metrics.BUCKET_SECONDS)  # every reading of metrics' clock a bucket later
    monkeypatch.setattr(metrics, "time", SimpleNamespace(time=lambda: next(readings)))
    board = client.get("/admin/metrics").json
    assert board["gauges"][-1]["stock"] == {str(product_id): 5}
    assert board["gauges"][-1]["t"] == board["series"][-1]["t"]


def test_gauge_series_keeps_one_point_per_bucket_and_leaves_gaps_unsampled(redis):
    now = 1_000_000.0
    metrics.sample_gauges(redis, {1: 10, 2: 3}, {"p50": 1.5, "p95": None}, {}, now=now - 10)
    metrics.sample_gauges(redis, {1: 9, 2: 3}, {}, {}, now=now)
    series = metrics.gauge_series(redis, buckets=4, now=now)
    assert [p["t"] for p in series] == [999_985, 999_990, 999_995, 1_000_000]
    assert [p["stock"] for p in series] == [{}, {"1": 10, "2": 3}, {}, {"1": 9, "2": 3}]
    assert series[1]["latency"] == {"p50": 1.5}


def test_with_admin_token_the_dashboard_and_metrics_need_it(client, admin_token):
    assert client.get("/admin/", headers={"Accept": "text/html"}).status_code == 404
    assert client.get("/admin/metrics").status_code == 404
    assert client.get("/admin/?token=wrong").status_code == 404
    page = client.get(f"/admin/?token={admin_token}")
    assert page.status_code == 200 and b"Sale dashboard" in page.data
    assert client.get("/admin/metrics", headers={"X-Admin-Token": admin_token}).status_code == 200
    assert '<meta name="referrer" content="no-referrer">' in page.get_data(as_text=True)


def test_the_dashboard_script_sends_the_page_token_with_each_poll():
    from tests.live_server import ROOT

    script = (ROOT / "static" / "js" / "admin.js").read_text()
    assert 'get("token")' in script and 'headers["X-Admin-Token"] = token' in script


def test_the_vendored_chart_js_is_pinned_with_its_licence():
    from tests.live_server import ROOT

    vendor = ROOT / "static" / "vendor"
    assert (vendor / "chartjs" / "chart.umd.min.js").read_text()[:40].find("Chart.js v4.6.1") > 0
    assert "MIT License" in (vendor / "chartjs" / "LICENSE.md").read_text()
    assert "4.6.1" in (vendor / "README.md").read_text()
