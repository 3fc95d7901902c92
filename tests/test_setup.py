"""Configuration and migrations: plain PostgreSQL URLs work, and the schema migrates both ways on SQLite."""

import sqlite3
import subprocess

import pytest

from config import TestConfig, normalise_database_url
from tests.live_server import BIN, ROOT, server_env


def test_plain_postgresql_urls_use_the_psycopg2_driver_we_ship():
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalise_database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalise_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_the_migration_upgrades_and_downgrades_on_sqlite(tmp_path):
    path = tmp_path / "m.db"
    env = server_env(f"sqlite:///{path}", TestConfig.REDIS_URL)

    def flask_db(*args):
        subprocess.run([str(BIN / "flask"), "--app", "app", "db", *args], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=60)

    def tables():
        with sqlite3.connect(path) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
            return {name for (name,) in rows}

    flask_db("upgrade")
    assert {"products", "orders", "inventory_events", "ix_orders_product_status_expires"} <= tables()
    flask_db("downgrade", "base")
    assert not {"products", "orders", "inventory_events"} & tables()
    flask_db("upgrade")
    assert "orders" in tables()


def _seed_confirmed_hold_at_0002(connection, execute):
    """A product with one CONFIRMED hold (and its ledger) as revision 0002 would have stored it."""
    execute(connection, "INSERT INTO products (id, slug, name, description, price_cents, total_stock, "
            "max_per_customer, sale_starts_at, sale_ends_at, confirmed_units) VALUES (1, 'p', 'P', '', "
            "250, 5, 2, '2000-01-01 00:00:00', '2999-01-01 00:00:00', 2)")  # fixed-date-ok: stored only
    execute(connection, "INSERT INTO orders (id, product_id, customer_email, quantity, status, "
            "hold_expires_at, created_at, confirmed_at) VALUES ('h-old-confirmed-1', 1, 'a@x.io', 2, "
            "'CONFIRMED', '2000-01-01 00:02:00', '2000-01-01 00:00:00', "  # fixed-date-ok: stored only
            "'2000-01-01 00:01:00')")  # fixed-date-ok: stored only
    for kind, delta in (("HOLD_CREATED", -2), ("CONFIRMED", 0)):
        execute(connection, "INSERT INTO inventory_events (product_id, order_id, type, delta, metadata, "
                f"created_at) VALUES (1, 'h-old-confirmed-1', '{kind}', {delta}, '{{}}', "
                "'2000-01-01 00:01:00')")  # fixed-date-ok: stored only


def _migrate_with_data(database_url, connect, execute, query):
    env = server_env(database_url, TestConfig.REDIS_URL)

    def flask_db(*args):
        done = subprocess.run([str(BIN / "flask"), "--app", "app", "db", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]

    flask_db("upgrade", "0002")
    with connect() as connection:
        _seed_confirmed_hold_at_0002(connection, execute)
    flask_db("upgrade")
    with connect() as connection:
        assert query(connection, "SELECT state, amount_cents, idempotency_key FROM payments") == [
            ("captured", 500, "flashsale-hold-h-old-confirmed-1")]
        # 0003 gave the hold its CONFIRMING event, and 0009 put it before the CONFIRMED (as the audit reads).
        assert query(connection, "SELECT type FROM inventory_events ORDER BY id") == [
            ("HOLD_CREATED",), ("CONFIRMING",), ("CONFIRMED",)]
        assert query(connection, "SELECT count(*) FROM orders WHERE confirmation_requested_at "
                                 "= confirmed_at") == [(1,)]
        # 0007: a hold confirmed before the outbox existed has its order.confirmed, handed out, never sent.
        assert query(connection, "SELECT webhook_id, type, hold_id, fanned_out FROM webhook_events") == [
            ("msg_backfilled_h-old-confirmed-1", "order.confirmed", "h-old-confirmed-1", True)]
        assert query(connection, "SELECT count(*) FROM webhook_deliveries") == [(0,)]
    audited = subprocess.run([str(BIN / "flask"), "--app", "app", "audit"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    flask_db("downgrade", "0002")
    with connect() as connection:
        assert query(connection, "SELECT type FROM inventory_events ORDER BY id") == [
            ("HOLD_CREATED",), ("CONFIRMED",)]
    flask_db("upgrade")


def test_revision_0003_backfills_confirmed_holds_and_downgrades_on_sqlite(tmp_path):
    from contextlib import closing

    path = tmp_path / "m3.db"

    def connect():
        return closing(sqlite3.connect(path, isolation_level=None))

    _migrate_with_data(f"sqlite:///{path}", connect, lambda c, sql: c.execute(sql),
                       lambda c, sql: [tuple(row) for row in c.execute(sql)])


@pytest.mark.postgres("migrates a PostgreSQL database of its own (the SQLite twin is the test above)")
def test_revision_0003_backfills_confirmed_holds_and_downgrades_on_postgresql(app):
    from contextlib import closing, contextmanager

    import psycopg2

    base = app.config["SQLALCHEMY_DATABASE_URI"].replace("postgresql+psycopg2://", "postgresql://")
    server, test_database = base.rsplit("/", 1)
    name = f"{test_database}_migrations"  # beside the test database, so parallel suites never share it
    admin = psycopg2.connect(server + "/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name}")

    @contextmanager
    def connect():
        with closing(psycopg2.connect(f"{server}/{name}")) as connection:
            connection.autocommit = True
            yield connection

    def execute(connection, sql):
        with connection.cursor() as cursor:
            cursor.execute(sql.replace("%", "%%"))

    def query(connection, sql):
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return [tuple(row) for row in cursor.fetchall()]

    try:
        _migrate_with_data(f"{server}/{name}", connect, execute, query)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
