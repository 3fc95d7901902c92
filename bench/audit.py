"""The audit at scale: time and peak memory of `flask audit` over a shop with 1,000,000 orders, before
(the audit as it was, read from git) and after, in the same run.

    .venv/bin/python bench/audit.py                    # 1,000,000 orders of history, about 10 minutes
    .venv/bin/python bench/audit.py --orders 100000    # a smaller shop (a smoke test)

It creates (when missing) and resets its own database and Redis db (like bench/run.py), migrates, and
stages a live sale (--live orders placed over the last few minutes: holds held, lapsed, being paid,
paid with real fake-gateway charges, released) and measures the audits; then it bulk-inserts the
history (past sales of --per-sale orders each, with their ledger events and payments, all in SQL with
generate_series) and measures them again: the audit as it was (--before, a git revision), the audit now
over the whole shop, the live sale alone (--product) and the last hour (--since 1h). Each
measurement is a fresh process (the app, then the audit, as `flask audit` runs it, the gateway's
charges included): wall time, and peak resident memory over the process before the audit (ru_maxrss).
Variants take turns within each round, so before and after share the machine's load (the before/after
ratio is taken per round, then its median). Every audit must pass (the staged shop is sound). Prints
the figures, writes bench/audit-latest.json.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # flashsale, for the fake gateway

import fixtures  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LATEST = ROOT / "bench" / "audit-latest.json"
BEFORE = "ca9d45f"  # the last commit with the audit that read every event into a dict (issue 25)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000, help="orders of history (past sales)")
    parser.add_argument("--per-sale", type=int, default=5_000, help="orders per past sale")
    parser.add_argument("--live", type=int, default=5_000, help="orders of the live sale")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per variant (median time)")
    parser.add_argument("--before", default=BEFORE, help="git revision of the audit measured as 'before'")
    parser.add_argument("--skip-before", action="store_true", help="do not measure the audit as it was")
    parser.add_argument("--database-url",
                        default=os.environ.get("BENCH_DATABASE_URL",
                                               "postgresql://postgres@127.0.0.1:5432/flashsale_bench"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
    parser.add_argument("--measure", nargs=2, metavar=("VARIANT", "SCOPE"), help=argparse.SUPPRESS)
    return parser.parse_args()


def env(args):
    """The production configuration's essentials, on the benchmark's database and Redis."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("RATELIMIT_", "FAKE_PAYMENT"))},
            "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url, "FLASHSALE_ENV": "production",
            "SECRET_KEY": "bench-not-secret", "PYTHONPATH": str(ROOT), "FLASK_APP": "app", "LOG_LEVEL": "warning"}


# --- the shop --------------------------------------------------------------------------------------

LIVE_SALE = """
WITH placed AS (
    SELECT g, now() - interval '5 minutes' + g * interval '50 milliseconds' AS at,
           CASE WHEN g %% 10 < 3 THEN 'CONFIRMED' WHEN g %% 10 < 5 THEN 'EXPIRED'
                WHEN g %% 10 < 6 THEN 'RELEASED' WHEN g %% 10 < 7 THEN 'CONFIRMING' ELSE 'PENDING' END AS status
    FROM generate_series(1, %(orders)s) g
)
INSERT INTO orders (id, product_id, customer_email, quantity, status, hold_expires_at, created_at,
                    confirmation_requested_at, confirmed_at)
SELECT 'live-' || g, %(pid)s, 'live' || g || '@bench.example', 1, status,
       CASE WHEN status = 'PENDING' AND g %% 2 = 0 THEN now() + interval '2 minutes'  -- held, live
            WHEN status = 'EXPIRED' OR status = 'PENDING' THEN at + interval '1 second'  -- lapsed
            ELSE at + interval '2 minutes' END,
       at,
       CASE WHEN status IN ('CONFIRMED', 'CONFIRMING') THEN at + interval '100 milliseconds' END,
       CASE WHEN status = 'CONFIRMED' THEN at + interval '400 milliseconds' END
FROM placed
"""

# Events per status (type, delta per unit), and what each status's orders were like.
HISTORY_ORDERS = """
INSERT INTO orders (id, product_id, customer_email, quantity, status, hold_expires_at, created_at,
                    confirmation_requested_at, confirmed_at)
SELECT 'h' || %(pid)s || '-' || g, %(pid)s, 'h' || %(pid)s || '-' || g || '@history.example', 1,
       CASE WHEN g %% 20 < 8 THEN 'CONFIRMED' WHEN g %% 20 < 17 THEN 'EXPIRED' ELSE 'RELEASED' END,
       %(start)s + g * interval '1 second' + interval '2 minutes',
       %(start)s + g * interval '1 second',
       CASE WHEN g %% 20 < 8 OR g %% 20 = 19 THEN %(start)s + g * interval '1 second' + interval '30 seconds' END,
       CASE WHEN g %% 20 < 8 THEN %(start)s + g * interval '1 second' + interval '31 seconds' END
FROM generate_series(1, %(orders)s) g
"""

EVENTS = """
INSERT INTO inventory_events (product_id, order_id, type, delta, metadata, created_at)
SELECT o.product_id, o.id, e.type, e.delta * o.quantity, '{}', o.created_at + e.n * interval '1 second'
FROM orders o
JOIN LATERAL (VALUES (0, 'HOLD_CREATED', -1, true),
                     (1, 'CONFIRMING', 0, o.confirmation_requested_at IS NOT NULL),
                     (2, 'CONFIRMED', 0, o.status = 'CONFIRMED'),
                     (2, 'EXPIRED', 1, o.status = 'EXPIRED'),
                     (2, 'RELEASED', 1, o.status = 'RELEASED')) AS e(n, type, delta, happened) ON e.happened
WHERE o.product_id = ANY(%(pids)s)
ORDER BY o.created_at, e.n
"""

PAYMENTS = """
INSERT INTO payments (order_id, amount_cents, idempotency_key, state, charge_ref, attempts, created_at,
                      attempted_at, settled_at)
SELECT o.id, 100, 'flashsale-hold-' || o.id,
       CASE o.status WHEN 'CONFIRMED' THEN 'captured' WHEN 'CONFIRMING' THEN 'started' ELSE 'refused' END,
       CASE WHEN o.status = 'CONFIRMED' THEN %(ref)s || o.id END, 1, o.confirmation_requested_at,
       o.confirmation_requested_at, o.confirmed_at
FROM orders o WHERE o.product_id = ANY(%(pids)s) AND o.confirmation_requested_at IS NOT NULL
"""


def stage_live_sale(conn, database_url, orders):
    """The sale running now, with the fake gateway's captures for its paid holds; returns its slug."""
    from sqlalchemy import create_engine

    from flashsale.gateways.fake import FakeGateway

    pid, = fixtures.make_products(conn, "live", 1, orders, max_per_customer=2)
    with conn.cursor() as cur:
        cur.execute(LIVE_SALE, {"pid": pid, "orders": orders})
        cur.execute(EVENTS, {"pids": [pid]})
        cur.execute(PAYMENTS, {"pids": [pid], "ref": "fake_ch_"})
        _count_confirmed(cur, [pid])
        cur.execute("SELECT p.idempotency_key, p.order_id FROM payments p JOIN orders o ON o.id = p.order_id "
                    "WHERE o.product_id = %s AND o.status = 'CONFIRMED'", (pid,))
        paid = cur.fetchall()
    engine = create_engine(database_url)
    gateway = FakeGateway(engine)
    for key, hold_id in paid:
        gateway.charge(key, 100, "live@bench.example", hold_id)
    engine.dispose()
    return "live-1"


def add_history(conn, orders, per_sale):
    """Past sales of per_sale orders each (8 in 20 paid, 9 lapsed, 3 released, one of those refused at
    payment), a day apart, with their events and payments (history: charge_ref 'backfilled-')."""
    sales = max(1, orders // per_sale)
    pids = fixtures.make_products(conn, "past", sales, per_sale, max_per_customer=2)
    with conn.cursor() as cur:
        for n, pid in enumerate(pids):
            cur.execute(HISTORY_ORDERS, {"pid": pid, "orders": per_sale,
                                         "start": datetime.now(timezone.utc).replace(microsecond=0)
                                         - timedelta(days=n + 1)})
        cur.execute(EVENTS, {"pids": pids})
        cur.execute(PAYMENTS, {"pids": pids, "ref": "backfilled-"})
        _count_confirmed(cur, pids)
        for table in ("orders", "inventory_events", "payments", "products"):
            cur.execute(f"VACUUM ANALYZE {table}")
    return sales * per_sale


def _count_confirmed(cur, pids):
    cur.execute("UPDATE products p SET confirmed_units = (SELECT coalesce(sum(quantity), 0) FROM orders o "
                "WHERE o.product_id = p.id AND o.status = 'CONFIRMED') WHERE p.id = ANY(%s)", (pids,))
    # Each paid order's order.confirmed event, as the confirming transaction writes it (the audit checks).
    cur.execute("INSERT INTO webhook_events (webhook_id, type, hold_id, product_id, ordering_key, body, "
                "created_at, fanned_out) SELECT 'msg_bench_' || o.id, 'order.confirmed', o.id, o.product_id, "
                "'hold:' || o.id, '{}', o.confirmed_at, true FROM orders o "
                "WHERE o.product_id = ANY(%s) AND o.status = 'CONFIRMED'", (pids,))


# --- one measurement, in its own process -----------------------------------------------------------

def measure(variant, scope, before):
    """Run one audit in this (fresh) process and print {seconds, peak_mb, base_mb, breaches} as JSON."""
    from config import Config
    from flashsale import create_app
    from flashsale.extensions import db, redis_store
    from flashsale.gateways import gateway_from_config

    app = create_app(Config)
    with app.app_context():
        config = app.config
        gateway = gateway_from_config(config, redis_store.client)
        db.session.execute(db.text("SELECT 1"))  # the connection is open before the clock starts
        db.session.rollback()
        if variant == "before":
            run = _audit_before(before)
            call = lambda: run(db.session, gateway, config["PAYMENT_FINAL_SECONDS"])  # noqa: E731
        else:
            from flashsale.inventory.audit import Scope, audit_report

            scopes = {"all": Scope(), "live": Scope(products=("live-1",)),
                      "recent": Scope(since=timedelta(hours=1))}
            call = lambda: audit_report(db.session, gateway, config["PAYMENT_FINAL_SECONDS"],  # noqa: E731
                                        scopes[scope]).breaches
        base = _rss_mb()
        started = time.perf_counter()
        breaches = call()
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": base,
                      "breaches": [str(b) for b in breaches[:5]], "breach_count": len(breaches)}))


def _rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def _audit_before(revision):
    """The audit function of `revision` (flashsale/inventory/audit.py), loaded beside today's package."""
    import importlib.util

    source = subprocess.run(["git", "show", f"{revision}:flashsale/inventory/audit.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("flashsale.inventory.audit_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "flashsale.inventory"
    exec(compile(source, f"{revision}:flashsale/inventory/audit.py", "exec"), module.__dict__)
    return module.audit


def measure_once(args, variant, scope):
    """One audit in a fresh process: {seconds, peak_mb, base_mb, breaches, breach_count, loadavg}."""
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, __file__, "--measure", variant, scope, "--before", args.before],
                          cwd=ROOT, env=env(args), capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"{variant}/{scope} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "loadavg": load}


def run_rounds(args, variants, history):
    """Every variant once per round, in turn (so each round's figures share the machine's load); one
    row per variant: the median time, the largest peak memory, and the before/after ratio per round."""
    rounds = []
    for n in range(args.rounds):
        rounds.append({v: measure_once(args, *v) for v in variants})
        print(f"  round {n + 1}: " + ", ".join(f"{v[0]} {v[1]} {r['seconds']:.2f} s" for v, r in rounds[-1].items()),
              flush=True)
    rows = []
    for variant, scope in variants:
        runs = [r[(variant, scope)] for r in rounds]
        failed = [r for r in runs if r["breach_count"]]
        row = {"variant": variant, "scope": scope, "history": history, "rounds": len(runs),
               "seconds": statistics.median(r["seconds"] for r in runs),
               "seconds_range": [min(r["seconds"] for r in runs), max(r["seconds"] for r in runs)],
               "peak_mb": max(r["peak_mb"] for r in runs),
               "audit_mb": max(r["peak_mb"] - r["base_mb"] for r in runs),
               "loadavg": [r["loadavg"] for r in runs],
               "breaches": failed[0]["breaches"] if failed else []}
        if ("before", "all") in variants and variant == "after":
            row["before_over_after"] = statistics.median(
                r[("before", "all")]["seconds"] / r[(variant, scope)]["seconds"] for r in rounds)
        rows.append(row)
        print(f"  {variant:<7} {scope:<7} {row['seconds']:8.2f} s  peak {row['peak_mb']:7.0f} MB "
              f"(audit +{row['audit_mb']:.0f} MB)" + (f"  before/after x{row['before_over_after']:.1f}"
                                                      if "before_over_after" in row else "")
              + (f"  BREACHES {row['breaches']}" if failed else ""), flush=True)
    return rows


def main():
    args = parse_args()
    if args.measure:
        return measure(*args.measure, args.before)
    import redis

    started = time.monotonic()
    fixtures.ensure_database(args.database_url)
    fixtures.reset_schema(args.database_url, [str(BIN / "flask")], env(args), ROOT)
    redis.Redis.from_url(args.redis_url).flushdb()  # the benchmark's own db only
    rows = []
    with closing(fixtures.connect(args.database_url)) as conn:
        stage_live_sale(conn, args.database_url, args.live)
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
        print(f"live sale staged ({args.live:,} orders); the shop has no history yet", flush=True)
        variants = [("before", "all")] * (not args.skip_before) + [("after", "all"), ("after", "live"),
                                                                    ("after", "recent")]
        rows += run_rounds(args, variants, 0)
        seeding = time.monotonic()
        history = add_history(conn, args.orders, args.per_sale)
        seeded_s = time.monotonic() - seeding
        with conn.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM inventory_events), "
                        "(SELECT count(*) FROM payments), pg_database_size(current_database())")
            orders, events, payments, size = cur.fetchone()
        print(f"history added: {history:,} orders in {seeded_s:.0f} s; the shop: {orders:,} orders, "
              f"{events:,} events, {payments:,} payments, {size / 2**20:,.0f} MB", flush=True)
        rows += run_rounds(args, variants, history)
    result = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "loadavg_end": os.getloadavg()},
              "shop": {"orders": orders, "events": events, "payments": payments, "database_mb": size / 2**20,
                       "live_orders": args.live, "history_orders": history, "seeding_s": seeded_s},
              "before_revision": args.before, "rows": rows, "total_s": time.monotonic() - started}
    LATEST.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {LATEST.relative_to(ROOT)}")
    if any(row["breaches"] for row in rows):
        print("FAILED: an audit reported breaches on a sound shop")
        return 1
    return 0


def _commit():
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
