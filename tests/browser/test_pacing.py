"""The product page polls at the pace the server gives it (with jitter), and revalidates with its ETag."""

import time

import pytest
from playwright.sync_api import expect

from config import TestConfig
from tests.live_server import LiveServer

LIVE, SOLD_OUT = 1.0, 4.0  # seconds between polls the server asks for, in this module's server


@pytest.fixture(scope="module")
def live(app, chromium):
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=1, threads=8,
                    POLL_LIVE_SECONDS=LIVE, POLL_SOLD_OUT_SECONDS=SOLD_OUT) as server:
        yield server


def test_the_page_follows_the_servers_pace(live, page, make_product):
    make_product(total_stock=1)
    polls = []
    page.on("request", lambda r: "/stock" in r.url and polls.append((time.monotonic(), r.headers)))
    page.goto(f"{live.url}/products/ps5")
    expect(page.locator("[data-stock-text]")).to_have_text("1 of 1 left")
    deadline = time.monotonic() + 10
    while len(polls) < 5 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    gaps = [b[0] - a[0] for a, b in zip(polls, polls[1:5], strict=False)]
    assert len(gaps) == 4 and all(0.7 * LIVE <= gap <= 1.35 * LIVE + 0.2 for gap in gaps), gaps
    assert len({round(gap, 2) for gap in gaps}) > 1  # jitter: no two pages poll in lockstep
    assert "if-none-match" in polls[-1][1]  # an unchanged stock is a 304 with no body

    answer = page.request.post(f"{live.url}/api/products/ps5/holds", data={"email": "bob@example.com"})
    assert answer.status == 201
    expect(page.locator("[data-stock-text]")).to_have_text("Sold out", timeout=5000)
    seen = len(polls)
    deadline = time.monotonic() + 3 * SOLD_OUT
    while len(polls) < seen + 2 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    gap = polls[seen + 1][0] - polls[seen][0]
    assert 0.7 * SOLD_OUT <= gap <= 1.35 * SOLD_OUT + 0.2, gap
