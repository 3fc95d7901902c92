"""Playwright driving Debian's Chromium against real web server (granian) + RQ worker processes.

Skipped only when /usr/bin/chromium is missing outside CI; with CI=true a missing browser fails the run
(.ci/run installs it). Never `playwright install`: the machines cannot download browser builds.
"""

import os
from pathlib import Path

import pytest

from config import TestConfig
from tests.live_server import LiveServer

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IN_CI = os.environ.get("CI", "").lower() == "true"
ADMIN_TOKEN = "browser-admin-token"


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium for one test module.

    Module scope, not session: Playwright's sync API keeps an event loop running on this thread until it
    stops, and later modules call asyncio.run(), which refuses to start inside a running loop.
    """
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"CI=true but {CHROMIUM} is missing: .ci/run should have installed chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def live(app, chromium):
    """The web server and a worker with the scheduler on the test database and Redis; ADMIN_TOKEN is set."""
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=1, threads=8,
                    with_worker=True, HOLD_SECONDS=60, ADMIN_TOKEN=ADMIN_TOKEN,
                    FAKE_PAYMENT_DELAY_MS=1500) as server:  # long enough to see a payment run
        yield server


@pytest.fixture
def browser_errors():
    """Console errors and uncaught exceptions of the test's page; a test that expects some clears them."""
    return []


@pytest.fixture
def page(chromium, browser_errors):
    """A fresh browser context and page; fails the test if the page broke the CSP or threw."""
    context = chromium.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.on("console", lambda m: browser_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: browser_errors.append(str(error)))
    yield page
    context.close()
    assert not browser_errors, f"browser errors: {browser_errors}"
