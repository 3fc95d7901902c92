"""Ceilings and baselines the benchmark compares the product against, served by the same web server.

    BIND=127.0.0.1:18601 gunicorn -c gunicorn.conf.py bench.baselines:app

- GET  /hello                    the hello-world ceiling: Flask + the server and nothing else (POST too,
                                 for the burst's connection-storm floor).
- POST /redis/<pid>/holds        the sold-out path's two Redis round trips (a read, a pipelined write)
                                 and nothing else: the floor under the product's fast rejection.
- POST /baseline/<pid>/holds     lock-free: the same database work as ONE conditional statement (a
                                 counter UPDATE ... WHERE available >= qty, the order and its event, in
                                 one autocommit round trip); PostgreSQL's row lock is the only queue.
- POST /naive/<pid>/holds        the naive reading of the design: a Redis lock polled with sleeps, then
                                 BEGIN, SUM over the product's orders, INSERT order, INSERT event, COMMIT.

Under TRUSTED_PROXIES the app reads the client address from X-Forwarded-For (ProxyFix), and so do these,
so every request pays the same middleware; they have no rate limiter (that is the product's own cost).
The lock-free and naive baselines write real orders and HOLD_CREATED events into the product's tables, so
`flask audit` checks them too.
The lock-free baseline keeps its counter in `bench_stock`, a table only the benchmark creates.
"""

import os
import random
import secrets
import time

import redis
from flask import Flask, jsonify, request
from sqlalchemy import create_engine, text
from werkzeug.middleware.proxy_fix import ProxyFix

from config import normalise_database_url

app = Flask(__name__)
if int(os.environ.get("TRUSTED_PROXIES", 0)):
    hops = int(os.environ["TRUSTED_PROXIES"])
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
# The same pool as the app's (config.py): DB_POOL_SIZE kept, 10 more opened when busy.
engine = create_engine(normalise_database_url(os.environ["DATABASE_URL"]), pool_pre_ping=True,
                       pool_size=int(os.environ.get("DB_POOL_SIZE", 5)), max_overflow=10)
autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
store = redis.Redis.from_url(os.environ["REDIS_URL"])

HOLD_SECONDS = int(os.environ.get("HOLD_SECONDS", 120))

# One statement: take the unit from the counter only if it is there (the row lock queues buyers),
# insert the order and its ledger event from the same statement. No Redis, no SUM, no second trip.
BASELINE_SQL = text("""
WITH take AS (
    UPDATE bench_stock SET available = available - :qty
    WHERE product_id = :pid AND available >= :qty
    RETURNING product_id
), placed AS (
    INSERT INTO orders (id, product_id, customer_email, quantity, status, hold_expires_at, created_at)
    SELECT :id, product_id, :email, :qty, 'PENDING',
           statement_timestamp() + make_interval(secs => :hold), statement_timestamp()
    FROM take
    RETURNING id, product_id, created_at
)
INSERT INTO inventory_events (product_id, order_id, type, delta, metadata, created_at)
SELECT product_id, id, 'HOLD_CREATED', -:qty, '{}', created_at FROM placed
RETURNING order_id
""")

NAIVE_TAKEN_SQL = text("""
SELECT p.total_stock, COALESCE(SUM(o.quantity), 0) FROM products p
LEFT JOIN orders o ON o.product_id = p.id
    AND (o.status = 'CONFIRMED' OR (o.status = 'PENDING' AND o.hold_expires_at > now()))
WHERE p.id = :pid GROUP BY p.total_stock
""")
NAIVE_ORDER_SQL = text("""
INSERT INTO orders (id, product_id, customer_email, quantity, status, hold_expires_at, created_at)
VALUES (:id, :pid, :email, :qty, 'PENDING', now() + make_interval(secs => :hold), now())
""")
NAIVE_EVENT_SQL = text("""
INSERT INTO inventory_events (product_id, order_id, type, delta, metadata, created_at)
VALUES (:pid, :id, 'HOLD_CREATED', -:qty, '{}', now())
""")
# KEYS[1] = lock; ARGV[1] = token. Returns 1 if deleted.
RELEASE = store.register_script(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")


def _order(pid):
    body = request.get_json(force=True)
    return {"id": secrets.token_urlsafe(18), "pid": pid, "email": body["email"].lower(),
            "qty": int(body.get("quantity", 1)), "hold": HOLD_SECONDS}


@app.route("/hello", methods=["GET", "POST"])
def hello():
    """The ceiling: the cheapest JSON answer Flask under this server and config can give."""
    return jsonify(hello="world")


@app.post("/redis/<int:pid>/holds")
def redis_ceiling(pid):
    """The sold-out path's Redis work alone: one MGET, then one pipelined write, then a 409."""
    _order(pid)
    store.mget(f"bench:redis:{pid}:a", f"bench:redis:{pid}:b")
    pipe = store.pipeline(transaction=False)
    pipe.hincrby("bench:redis:totals", "sold_out", 1)
    pipe.lpush("bench:redis:latency", 1)
    pipe.ltrim("bench:redis:latency", 0, 1999)
    pipe.execute()
    return jsonify(error={"code": "sold_out"}), 409


@app.post("/baseline/<int:pid>/holds")
def baseline_hold(pid):
    """Lock-free hold: one conditional statement, one round trip."""
    params = _order(pid)
    with autocommit.connect() as conn:
        placed = conn.execute(BASELINE_SQL, params).first()
    if placed is None:
        return jsonify(error={"code": "sold_out"}), 409
    return jsonify(id=placed[0]), 201


@app.post("/naive/<int:pid>/holds")
def naive_hold(pid):
    """The naive design: sleep-polled Redis lock, then SUM + two inserts in one transaction."""
    params = _order(pid)
    key, token = f"bench:naive:{pid}:lock", secrets.token_hex(16)
    deadline = time.monotonic() + 3.0
    while not store.set(key, token, nx=True, px=2000):
        if time.monotonic() > deadline:
            return jsonify(error={"code": "unavailable"}), 503
        time.sleep(0.005 + random.random() * 0.01)
    try:
        with engine.begin() as conn:
            total, taken = conn.execute(NAIVE_TAKEN_SQL, params).one()
            if total - taken < params["qty"]:
                return jsonify(error={"code": "sold_out"}), 409
            conn.execute(NAIVE_ORDER_SQL, params)
            conn.execute(NAIVE_EVENT_SQL, params)
    finally:
        RELEASE(keys=[key], args=[token])
    return jsonify(id=params["id"]), 201
