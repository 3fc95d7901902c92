"""Fixtures: one app per session on real PostgreSQL and Redis (or SQLite when told), clean per test.

TEST_DATABASE_URL and TEST_REDIS_URL choose the servers. With CI=true a missing server fails the run
loudly; elsewhere the tests that need PostgreSQL are skipped when the database is SQLite.
"""

import os
from datetime import datetime, timedelta, timezone

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text

from config import TestConfig
from flashsale import create_app
from flashsale.extensions import db, redis_store
from flashsale.inventory import catalog, snapshot, stock
from flashsale.inventory.holds import HoldPolicy
from flashsale.models import Product

IN_CI = os.environ.get("CI", "").lower() == "true"


def _require(what, check):
    try:
        check()
    except Exception as error:  # noqa: BLE001
        message = f"{what} is not reachable ({error.__class__.__name__}: {error})"
        if IN_CI:
            pytest.exit(f"CI=true and {message}: start it (see .ci/run)", returncode=3)
        pytest.exit(f"{message}; run the README's test command, which starts what is needed",
                    returncode=3)


@pytest.fixture(scope="session")
def app():
    """The application on the test database (migrated from scratch) and the test Redis database."""
    url = TestConfig.SQLALCHEMY_DATABASE_URI
    _require("the test database", lambda: create_engine(url).connect().close())
    _require("the test Redis", lambda: redis_lib.Redis.from_url(TestConfig.REDIS_URL).ping())
    application = create_app(TestConfig)
    with application.app_context():
        from flask_migrate import downgrade, upgrade

        # Prove the migration both ways on this backend, then run every test on the upgraded schema.
        # What an earlier run left behind goes first (a CONFIRMING hold, say, blocks a downgrade).
        upgrade()
        _truncate()
        downgrade(revision="base")
        upgrade()
    return application


@pytest.fixture(autouse=True)
def clean(request):
    """Empty tables and the test Redis database before each test that uses the app."""
    if "app" not in request.fixturenames:
        yield
        return
    application = request.getfixturevalue("app")
    with application.app_context():
        _truncate()
        redis_store.client.flushdb()
        catalog.forget()
        stock.forget_recent()
        snapshot.forget_shared()
    yield


def _truncate():
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text(
            "TRUNCATE inventory_events, payments, orders, products RESTART IDENTITY CASCADE"))
    else:
        for table in ("inventory_events", "payments", "orders", "products"):
            db.session.execute(text(f"DELETE FROM {table}"))
    db.session.commit()


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
             duration=timedelta(hours=1), price_cents=49999):
        with app.app_context():
            starts = datetime.now(timezone.utc) + starts_in
            product = Product(slug=slug, name=slug.upper(), description="", price_cents=price_cents,
                              total_stock=total_stock, max_per_customer=max_per_customer,
                              sale_starts_at=starts, sale_ends_at=starts + duration)
            db.session.add(product)
            db.session.commit()
            return product.id

    return make


def is_postgres(app):
    return app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")


@pytest.fixture
def postgres_only(app):
    """Skip on SQLite (only allowed outside CI): racing claims are proved on PostgreSQL."""
    if not is_postgres(app):
        if IN_CI:
            pytest.fail("CI must run the racing tests on PostgreSQL")
        pytest.skip("needs PostgreSQL (set TEST_DATABASE_URL)")
