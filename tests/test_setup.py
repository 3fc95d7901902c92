"""Configuration and migrations: plain PostgreSQL URLs work, and the schema migrates both ways on SQLite."""

import sqlite3
import subprocess

from config import normalise_database_url
from tests.live_server import BIN, ROOT, server_env


def test_plain_postgresql_urls_use_the_psycopg2_driver_we_ship():
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalise_database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalise_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_the_migration_upgrades_and_downgrades_on_sqlite(tmp_path):
    path = tmp_path / "m.db"
    env = server_env(f"sqlite:///{path}", "redis://127.0.0.1:6379/15")

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
