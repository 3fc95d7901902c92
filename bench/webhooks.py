"""Webhook delivery throughput: how fast one `flask worker` drains a backlog of events to one endpoint.

    .venv/bin/python bench/webhooks.py                   # 5,000 events
    .venv/bin/python bench/webhooks.py --events 20000

It resets its own database, writes --events order.confirmed events into the outbox (as a sale's
confirmations would, in bulk), starts a local endpoint that answers 204 after --latency-ms, and one real
`flask worker` with WEBHOOK_URLS pointing at it; it times the drain from the worker's start to the last
delivery recorded, and checks every event arrived, signed (verified with standardwebhooks), once.
Writes bench/webhooks-latest.json.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks import Webhook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import fixtures  # noqa: E402

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EVENTS = """
INSERT INTO webhook_events (webhook_id, type, hold_id, product_id, ordering_key, body, created_at, fanned_out)
SELECT 'msg_bench_' || g, 'order.confirmed', 'hold-' || g, %(pid)s, 'hold:hold-' || g,
       '{"type":"order.confirmed","timestamp":"' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
       || '","data":{"id":"hold-' || g || '"}}',
       now(), false
FROM generate_series(1, %(events)s) g
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=20, help="the endpoint's time to answer")
    parser.add_argument("--concurrency", type=int, default=8, help="WEBHOOK_CONCURRENCY")
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_EXPORT_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flashsale_bench_export"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
    return parser.parse_args()


def endpoint(latency):
    """A threaded server answering 204 after `latency` seconds; (server, received ids list)."""
    received, lock = [], threading.Lock()
    verifier = Webhook(SECRET)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            verifier.verify(body, dict(self.headers))
            time.sleep(latency)
            with lock:
                received.append(self.headers["webhook-id"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def main():
    args = parse_args()
    env = {**os.environ, "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url,
           "FLASHSALE_ENV": "production", "SECRET_KEY": "bench-not-secret", "PYTHONPATH": str(ROOT),
           "FLASK_APP": "app", "SWEEP_SECONDS": "1", "WEBHOOK_SECRET": SECRET,
           "WEBHOOK_CONCURRENCY": str(args.concurrency)}
    fixtures.ensure_database(args.database_url)
    fixtures.reset_schema(args.database_url, [sys.executable, "-m", "flask"], env, ROOT)
    server, received = endpoint(args.latency_ms / 1000)
    env["WEBHOOK_URLS"] = f"http://127.0.0.1:{server.server_port}/hooks"
    with closing(fixtures.connect(args.database_url)) as conn, conn.cursor() as cur:
        pid, = fixtures.make_products(conn, "hooks", 1, 10)
        cur.execute(EVENTS, {"pid": pid, "events": args.events})
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    started = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "flask", "worker"], cwd=ROOT, env=env,
                              start_new_session=True, stderr=open("/tmp/bench-webhooks-worker.log", "w"))  # noqa: SIM115
    try:
        with closing(fixtures.connect(args.database_url)) as conn, conn.cursor() as cur:
            while True:
                cur.execute("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'")
                if cur.fetchone()[0] == args.events:
                    break
                time.sleep(0.1)
        seconds = time.perf_counter() - started
    finally:
        stopping = time.perf_counter()
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        stopped_in = time.perf_counter() - stopping
        server.shutdown()
    assert len(set(received)) == args.events, (len(received), len(set(received)))
    result = {"events": args.events, "latency_ms": args.latency_ms, "concurrency": args.concurrency,
              "seconds": round(seconds, 2), "per_second": round(args.events / seconds, 1),
              "posts": len(received), "sigterm_stop_seconds": round(stopped_in, 1),
              "cpus": os.cpu_count(), "loadavg": os.getloadavg()[0]}
    print(json.dumps(result))
    (ROOT / "bench" / "webhooks-latest.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
