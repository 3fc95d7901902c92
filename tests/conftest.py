"""Fixtures: one app per session on real PostgreSQL and Redis (or SQLite), clean per test.

TEST_DATABASE_URL and TEST_REDIS_URL choose the servers (`python3 dev.py test` picks them). On SQLite a
test marked `postgres("why")` skips, saying why. With CI=true a missing server fails the run loudly and
so does such a skip, unless TEST_SERVERS=embedded says this run is the embedded one on purpose.
"""

import os
from datetime import datetime, timedelta, timezone

import pytest
import redis as redis_lib
from sqlalchemy import MetaData, create_engine

from config import TestConfig
from flashsale import create_app
from flashsale.extensions import db, limiter, redis_store
from flashsale.inventory.holds import HoldPolicy
from flashsale.models import Product
from tests.shop import Shop, reset
from tests.stripe_local import localstripe, localstripe_server  # noqa: F401 - fixtures

IN_CI = os.environ.get("CI", "").lower() == "true"
EMBEDDED = os.environ.get("TEST_SERVERS", "").lower() == "embedded"
ON_POSTGRES = TestConfig.SQLALCHEMY_DATABASE_URI.startswith("postgresql")
# CI's PostgreSQL run must find its servers and run every test; its embedded run skips on purpose.
STRICT = IN_CI and not EMBEDDED


def _require(what, check):
    try:
        check()
    except Exception as error:  # noqa: BLE001
        message = f"{what} is not reachable ({error.__class__.__name__}: {error})"
        if STRICT:
            pytest.exit(f"CI=true and {message}: start it (see .ci/run)", returncode=3)
        pytest.exit(f"{message}; run the README's test command, which starts what is needed",
                    returncode=3)


@pytest.fixture(scope="session")
def app():
    """The application on the test database (migrated from scratch) and the test Redis database."""
    url = TestConfig.SQLALCHEMY_DATABASE_URI
    if EMBEDDED and ON_POSTGRES:
        pytest.exit("TEST_SERVERS=embedded but TEST_DATABASE_URL is PostgreSQL: run `python3 dev.py test`",
                    returncode=3)
    _require("the test database", lambda: create_engine(url).connect().close())
    _require("the test Redis", lambda: redis_lib.Redis.from_url(TestConfig.REDIS_URL).ping())
    application = create_app(TestConfig)
    with application.app_context():
        from flask_migrate import downgrade, upgrade

        # The test database is the suite's own, so it starts empty whatever an earlier run left there (a
        # run of another branch may have stamped a revision this one does not have, or the same number with
        # other contents). Then prove the migration both ways on this backend and test the upgraded schema.
        leftover = MetaData()
        leftover.reflect(bind=db.engine)
        leftover.drop_all(bind=db.engine)
        upgrade()
        reset()
        downgrade(revision="base")
        upgrade()
    return application


@pytest.fixture(autouse=True)
def clean(request):
    """Empty tables, the test Redis database and the caches before each test that uses the app."""
    if "app" not in request.fixturenames:
        yield
        return
    application = request.getfixturevalue("app")
    with application.app_context():
        reset()
    yield


@pytest.fixture
def ctx(app):
    """An app context for calling the domain directly."""
    with app.app_context():
        yield app
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def session(ctx):
    return db.session


@pytest.fixture
def redis(ctx):
    return redis_store.client


@pytest.fixture
def policy():
    return HoldPolicy(hold_seconds=120, lock_ttl_ms=2000, lock_wait_ms=5000, max_quantity=10)


@pytest.fixture
def make_product(app):
    """Create a product (live for an hour by default) and return its id."""

    def make(slug="ps5", total_stock=100, max_per_customer=1, starts_in=timedelta(minutes=-1),
             duration=timedelta(hours=1), price_cents=49999, currency="usd"):
        with app.app_context():
            starts = datetime.now(timezone.utc) + starts_in
            product = Product(slug=slug, name=slug.upper(), description="", price_cents=price_cents, currency=currency,
                              total_stock=total_stock, max_per_customer=max_per_customer,
                              sale_starts_at=starts, sale_ends_at=starts + duration)
            db.session.add(product)
            db.session.commit()
            return product.id

    return make


@pytest.fixture
def app_with_limits(app):
    """A factory of apps with these rate-limit settings, each with its own limiter state; the global
    limiter is restored after the test."""
    saved = dict(limiter.__dict__)
    yield lambda **limits: create_app(TestConfig, **limits)
    limiter.__dict__.clear()
    limiter.__dict__.update(saved)


@pytest.fixture
def shop(app, policy):
    """The shop as tests drive it: place, lapse, status, payment, events, ledger (tests/shop.py)."""
    return Shop(app, policy)


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres(reason): needs PostgreSQL; skips on SQLite, saying why")


def pytest_collection_modifyitems(items):
    """On SQLite a test marked postgres("why") skips, saying why (CI's PostgreSQL run fails it instead)."""
    if ON_POSTGRES or STRICT:
        return
    for item in items:
        marker = item.get_closest_marker("postgres")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"needs PostgreSQL: {marker.args[0]}"))


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("postgres")
    if marker is not None and STRICT and not ON_POSTGRES:
        pytest.fail(f"CI=true on SQLite without TEST_SERVERS=embedded, and this test needs PostgreSQL: "
                    f"{marker.args[0]}", pytrace=False)
