"""Take the README's screenshots: product page, hold page, waiting page, sales list and admin dashboard.

    TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/flashsale_shots \\
    TEST_REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/python docs/take_screenshots.py

It EMPTIES the database and Redis db it is given (the test ones from config.TestConfig by default), seeds a
few demo sales, starts the web server and a worker (tests/live_server.py), buys through the API for half a minute
so the charts have a shape, and drives Debian's Chromium (/usr/bin/chromium) with Playwright.
"""

import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402
from sqlalchemy import text  # noqa: E402

from config import TestConfig  # noqa: E402
from flashsale import create_app  # noqa: E402
from flashsale.extensions import db, redis_store  # noqa: E402
from flashsale.models import Product  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402

DOCS = ROOT / "docs"
TOKEN = "screenshots"
SALES = [
    ("ps5", "PlayStation 5 Slim", "The console everyone queued for. 1 TB, one controller, no disc drive.",
     49999, 150, 2, timedelta(minutes=-5)),
    ("steam-deck", "Steam Deck OLED 512 GB", "HDR OLED screen, longer battery, the same deck.", 54900, 25, 1,
     timedelta(minutes=-2)),
    ("switch-2", "Nintendo Switch 2", "Launch bundle with Mario Kart World.", 49999, 80, 1, timedelta(hours=3)),
    ("retro-mini", "Retro Mini Console", "Forty classic games, two wired pads.", 7999, 30, 2, timedelta(days=-2)),
    ("launch", "Console launch bundle", "Sold through a fair line: a place for everyone, in order.", 59999, 500, 1,
     timedelta(minutes=-1)),
]
WAITING_ROOM = {"launch": 2}  # slug: admissions per second


def seed(app):
    """Empty the database and Redis, then create the demo sales."""
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        db.session.execute(text("TRUNCATE inventory_events, orders, products RESTART IDENTITY CASCADE"))
        now = datetime.now(timezone.utc)
        for slug, name, description, price, stock, limit, starts_in in SALES:
            starts = now + starts_in
            db.session.add(Product(slug=slug, name=name, description=description, price_cents=price,
                                   total_stock=stock, max_per_customer=limit, sale_starts_at=starts,
                                   sale_ends_at=starts + timedelta(hours=1), waiting_room=slug in WAITING_ROOM,
                                   admission_rate=WAITING_ROOM.get(slug)))
        db.session.commit()
        redis_store.client.flushdb()


def shop_traffic(request, url, seconds):
    """Buyers for `seconds`: holds, confirmations, releases, and refusals once a sale sells out."""
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        n += 1
        slug = random.choice(["ps5", "ps5", "steam-deck"])
        answer = request.post(f"{url}/api/products/{slug}/holds", data={"email": f"buyer{n}@example.com"})
        if answer.status == 201:
            hold = answer.json()["id"]
            roll = random.random()
            if roll < 0.55:
                request.post(f"{url}/api/holds/{hold}/confirm")
            elif roll < 0.7:
                request.post(f"{url}/api/holds/{hold}/release")
        time.sleep(random.uniform(0.05, 0.35))


def main():
    app = create_app(TestConfig)
    seed(app)
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=1, threads=8,
                    with_worker=True, ADMIN_TOKEN=TOKEN) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 860}, device_scale_factor=1)
        dashboard = context.new_page()
        dashboard.goto(f"{server.url}/admin/?token={TOKEN}")  # its polls sample stock while buyers buy
        for n in range(120):  # a crowd already in the line for the launch
            context.request.post(f"{server.url}/api/products/launch/queue", data={"email": f"fan{n}@example.com"})
        shop_traffic(context.request, server.url, 32)

        page = context.new_page()
        page.goto(f"{server.url}/")
        page.screenshot(path=DOCS / "screen-sales.png", full_page=True)
        page.goto(f"{server.url}/products/ps5")
        page.wait_for_selector("[data-stock-text]")
        page.screenshot(path=DOCS / "screen-product.png", full_page=True)
        page.get_by_label("Email").fill("ann@example.com")
        page.get_by_label("Quantity").fill("2")
        page.get_by_label("Quantity").press("Enter")
        page.wait_for_url("**/holds/*")
        page.wait_for_timeout(1500)  # let the countdown tick so the picture shows it running
        page.screenshot(path=DOCS / "screen-hold.png", full_page=True)

        page.goto(f"{server.url}/products/launch")
        page.get_by_label("Email").fill("ann@example.com")
        page.get_by_role("button", name="Join the line").click()
        page.wait_for_url("**/queue/*")
        page.wait_for_timeout(2500)  # one poll: position and progress move
        page.screenshot(path=DOCS / "screen-waiting.png", full_page=True)

        dashboard.wait_for_timeout(5500)  # one more poll after the last purchase
        dashboard.screenshot(path=DOCS / "screen-dashboard.png", full_page=True)
        browser.close()
    print("wrote", ", ".join(sorted(p.name for p in DOCS.glob("screen-*.png"))))


if __name__ == "__main__":
    main()
