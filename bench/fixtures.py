"""Benchmark data: a fresh schema, products made per round, and a sale's history inserted in bulk."""

import subprocess
from contextlib import closing

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

NEVER_RUNS_OUT = 10_000_000


def connect(database_url):
    """An autocommit psycopg2 connection to the benchmark database."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    return conn


def ensure_database(database_url):
    """Create the benchmark database when it does not exist yet (a fresh machine has none)."""
    params = psycopg2.extensions.parse_dsn(database_url)
    with closing(psycopg2.connect(database_url, dbname="postgres")) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (params["dbname"],))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(params["dbname"])))


def reset_schema(database_url, flask_cmd, env, cwd):
    """Drop everything, migrate from scratch with `flask db upgrade`, add the baseline's counter table."""
    with closing(connect(database_url)) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    subprocess.run([*flask_cmd, "db", "upgrade"], env=env, cwd=cwd, check=True, capture_output=True)
    with closing(connect(database_url)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE bench_stock (product_id integer PRIMARY KEY "
                    "REFERENCES products (id), available integer NOT NULL CHECK (available >= 0))")


def make_products(conn, slug_prefix, count, total_stock, max_per_customer=1):
    """Insert `count` products on sale for the next hour; returns their ids."""
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO products (slug, name, description, price_cents, total_stock,
                   max_per_customer, sale_starts_at, sale_ends_at)
               SELECT %(prefix)s || '-' || g, 'Bench ' || %(prefix)s || ' ' || g, '', 100, %(stock)s,
                   %(limit)s, now() - interval '1 minute', now() + interval '1 hour'
               FROM generate_series(1, %(count)s) g ORDER BY g RETURNING id""",
            {"prefix": slug_prefix, "stock": total_stock, "limit": max_per_customer,
             "count": count},
        )
        return [row[0] for row in cur.fetchall()]


def fund_baseline(conn, product_id, units):
    """Give the lock-free baseline's counter the product's stock."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO bench_stock (product_id, available) VALUES (%s, %s)",
                    (product_id, units))


def add_sold_history(conn, product_id, units):
    """Bulk-insert `units` confirmed one-unit orders (with their ledger events and captured payments).

    The sale's history: what a big sale leaves behind after it has sold `units` units. Orders were
    held an hour ago, accepted and paid a minute later, so the audit's checks hold for them. Their
    payments are marked as history (charge_ref "backfilled-...", like the ones migration 0003 backfills):
    the fake gateway holds no charge for them, and the audit does not look for one.
    """
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO orders (id, product_id, customer_email, quantity, status, hold_expires_at,
                   created_at, confirmation_requested_at, confirmed_at)
               SELECT 'hist-' || %(pid)s || '-' || g, %(pid)s, 'sold' || g || '@history.example', 1,
                   'CONFIRMED', now() - interval '58 minutes', now() - interval '60 minutes',
                   now() - interval '59 minutes', now() - interval '59 minutes'
               FROM generate_series(1, %(units)s) g""",
            {"pid": product_id, "units": units},
        )
        cur.execute(
            """INSERT INTO inventory_events (product_id, order_id, type, delta, metadata, created_at)
               SELECT o.product_id, o.id, t.type, t.delta, '{}', o.created_at
               FROM orders o CROSS JOIN (VALUES (1, 'HOLD_CREATED', -1), (2, 'CONFIRMING', 0),
                                                (3, 'CONFIRMED', 0)) t(n, type, delta)
               WHERE o.product_id = %(pid)s ORDER BY o.id, t.n""",
            {"pid": product_id},
        )
        cur.execute(
            """INSERT INTO payments (order_id, amount_cents, idempotency_key, state, charge_ref, attempts,
                   created_at, attempted_at, settled_at)
               SELECT o.id, 100, 'flashsale-hold-' || o.id, 'captured', 'backfilled-' || o.id, 1,
                   o.confirmation_requested_at, o.confirmation_requested_at, o.confirmed_at
               FROM orders o WHERE o.product_id = %(pid)s""",
            {"pid": product_id},
        )
        # ... and their order.confirmed events, as migration 0007 backfills them (the audit checks them).
        cur.execute(
            """INSERT INTO webhook_events (webhook_id, type, hold_id, product_id, ordering_key, body,
                   created_at, fanned_out)
               SELECT 'msg_backfilled_' || o.id, 'order.confirmed', o.id, o.product_id, 'hold:' || o.id,
                   '{"type":"order.confirmed","backfilled":true}', o.confirmed_at, true
               FROM orders o WHERE o.product_id = %(pid)s""",
            {"pid": product_id},
        )
        # Orders confirmed behind the app's back need their counter moved too (the audit checks it).
        cur.execute("UPDATE products SET confirmed_units = confirmed_units + %(units)s "
                    "WHERE id = %(pid)s", {"pid": product_id, "units": units})
        cur.execute("ANALYZE orders")
        cur.execute("ANALYZE inventory_events")
        cur.execute("ANALYZE payments")


def count_holds(conn, product_id):
    """(orders, events) recorded for a product."""
    with conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM orders WHERE product_id = %(p)s), "
                    "(SELECT count(*) FROM inventory_events WHERE product_id = %(p)s)",
                    {"p": product_id})
        return cur.fetchone()


def last_hold_epoch(conn, product_id):
    """When the product's last hold was created, by the database clock (epoch seconds)."""
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM max(created_at)) FROM orders WHERE product_id = %s",
                    (product_id,))
        value = cur.fetchone()[0]
        return float(value) if value is not None else None


def product_id(conn, slug):
    """The id of the product with this slug."""
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM products WHERE slug = %s", (slug,))
        return cur.fetchone()[0]
