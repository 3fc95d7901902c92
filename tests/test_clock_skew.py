"""Web hosts whose clocks disagree still serve one line: deadlines come from the database clock (design
section 13), so a host lagging 5 s (more than LOCK_WAIT_MS) places holds like any other."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from config import TestConfig
from flashsale.inventory import clock
from tests.faults import DATABASE_URL, assert_audit_passes, assert_every_accepted_hold_is_stored, hold
from tests.live_server import LiveServer

SKEWED = "several web hosts share one PostgreSQL clock; on SQLite the one host's clock is the database's"


@pytest.mark.postgres(SKEWED)
def test_shared_time_is_the_database_clock_whatever_this_hosts_clock_says(ctx, session, monkeypatch):
    monkeypatch.setattr(clock, "_offset", None)
    monkeypatch.setattr(clock, "skew_seconds", -5.0)
    assert abs(clock.host_time() - (time.time() - 5)) < 0.5
    assert abs(clock.shared_time(session) - clock.db_now(session).timestamp()) < 0.5
    assert abs(clock.estimated_shared_time() - time.time()) < 0.5  # the offset measured, kept


@pytest.mark.postgres(SKEWED)
def test_a_web_host_whose_clock_lags_5_s_places_holds_in_a_shared_line(app, make_product):
    """Two web servers, one lagging 5 s, one product, buyers on both at once: their requests wait in the
    same line and are served by whichever host holds the lock. With deadlines from each host's clock the
    lagging host's buyers were past their deadline on arrival: every one answered 503."""
    make_product(slug="drop", total_stock=1000, max_per_customer=1)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=16) as steady, \
            LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=16,
                       FAULT_CLOCK_SKEW_SECONDS=-5) as lagging:
        urls = [steady.url, lagging.url] * 100
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda i: (urls[i], hold(urls[i], "drop", f"b{i}@x.io")), range(200)))
    by_host = {url: [answer.status for u, answer in answers if u == url] for url in (steady.url, lagging.url)}
    assert by_host[lagging.url] == [201] * 100, sorted(set(by_host[lagging.url]))
    assert by_host[steady.url] == [201] * 100, sorted(set(by_host[steady.url]))
    assert_every_accepted_hold_is_stored(app, [answer for _, answer in answers])
    assert_audit_passes(app)


@pytest.mark.postgres(SKEWED)
def test_a_sale_opening_now_is_open_to_a_host_whose_estimate_runs_behind_within_its_error(
        ctx, session, shop, make_product, monkeypatch):
    """The cheap check before the lock runs on the estimated database clock. An estimate 0.5 s behind
    with a 0.6 s error bound (measured on a very slow round trip) must not refuse a sale the database
    clock has opened (it refused one seeded to open "now" before); one clearly early still is refused."""

    from datetime import timedelta

    from flashsale.errors import SaleNotOpen

    make_product(slug="opening", starts_in=timedelta(milliseconds=-1))
    monkeypatch.setattr(clock, "OFFSET_REFRESH_SECONDS", 3600)  # keep the staged estimate
    monkeypatch.setattr(clock, "_offset", (-0.5, time.monotonic(), 0.6))
    assert shop.place("early@x.io", slug="opening").status == "PENDING"
    make_product(slug="later", starts_in=timedelta(seconds=5))
    monkeypatch.setattr(clock, "_offset", (0.0, time.monotonic(), 0.6))
    with pytest.raises(SaleNotOpen):
        shop.place("eager@x.io", slug="later")
