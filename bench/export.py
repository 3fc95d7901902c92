"""`flask orders export` at scale: time and peak memory of exporting 100,000 confirmed orders.

    .venv/bin/python bench/export.py                      # 100,000 orders (and 10,000, to compare)
    .venv/bin/python bench/export.py --orders 20000       # a smaller run

It creates (when missing) and resets its own database, migrates, bulk-inserts two sales' history (every
order CONFIRMED with a captured payment: what the shop exports after a sale), then runs the real command
in a fresh process per measurement, `flask orders export --product SLUG --format FMT --output FILE`, for
the big sale and for one a tenth its size: wall time, and the process's peak resident memory (ru_maxrss
from wait4). Constant memory shows as the same peak for both sizes. Prints the figures and writes
bench/export-latest.json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import fixtures  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000, help="orders of the big sale")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per variant (median time)")
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_EXPORT_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flashsale_bench_export"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"),
                        help="only for the app's start-up: the export never touches Redis")
    return parser.parse_args()


def env(args):
    return {**os.environ, "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url,
            "FLASHSALE_ENV": "production", "SECRET_KEY": "bench-not-secret", "PYTHONPATH": str(ROOT),
            "FLASK_APP": "app"}


def measure(args, slug, fmt):
    """One export in a fresh process: (seconds, peak MB, rows, bytes)."""
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / f"orders.{fmt}"
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "flask", "orders", "export", "--product", slug,
                                    "--status", "CONFIRMED", "--format", fmt, "--output", str(target)],
                                   cwd=ROOT, env=env(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if status:
            raise RuntimeError(f"export failed: {process.stderr.read().decode()[-2000:]}")
        with target.open() as exported:
            rows = sum(1 for _ in exported) - (1 if fmt == "csv" else 0)
        return seconds, usage.ru_maxrss / 1024, rows, target.stat().st_size


def main():
    args = parse_args()
    fixtures.ensure_database(args.database_url)
    fixtures.reset_schema(args.database_url, [sys.executable, "-m", "flask"], env(args), ROOT)
    small = max(1, args.orders // 10)
    with closing(fixtures.connect(args.database_url)) as conn:
        big_id, small_id = fixtures.make_products(conn, "export", 2, args.orders)
        fixtures.add_sold_history(conn, big_id, args.orders)
        fixtures.add_sold_history(conn, small_id, small)
    results = []
    for fmt in ("csv", "jsonl"):
        for slug, orders in (("export-1", args.orders), ("export-2", small)):
            runs = [measure(args, slug, fmt) for _ in range(args.rounds)]
            assert all(rows == orders for _, _, rows, _ in runs), runs
            results.append({"format": fmt, "orders": orders,
                            "seconds": round(statistics.median(r[0] for r in runs), 2),
                            "peak_mb": round(max(r[1] for r in runs), 1),
                            "megabytes_written": round(runs[0][3] / 1e6, 1)})
            row = results[-1]
            print(f"{fmt:5} {orders:>8,} orders: {row['seconds']:.2f} s (median of {args.rounds}), "
                  f"peak {row['peak_mb']:.1f} MB, {row['megabytes_written']} MB written")
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "loadavg": os.getloadavg()[0]}
    (ROOT / "bench" / "export-latest.json").write_text(json.dumps({"machine": machine, "results": results},
                                                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
