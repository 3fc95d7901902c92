"""The waiting room under load: joins/s, admission accuracy, and the latency of the position poll.

    .venv/bin/python bench/waiting_room.py            # 3 rounds (about 2 minutes)
    .venv/bin/python bench/waiting_room.py --quick    # 1 round

Production config as in bench/run.py (the Procfile's web server, rate limits on, distinct buyers from
distinct addresses). Each round, on a fresh waiting-room product with stock that never runs out:
wrk joins the line as distinct shoppers (joins/s, p50/p99), next to hello world under the same server
in the same round; then wrk polls 3,000 tickets in turn (the waiting page's GET /api/queue/<ticket>,
which also admits the front of the line) while the admitted count is read before and after, so the
measured admission rate can be set beside the one configured. Prints a table of medians, writes
bench/results/waiting-room-*.json, runs `flask audit`.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixtures  # noqa: E402
import load  # noqa: E402
import run  # noqa: E402
import servers  # noqa: E402

ROOT, BIN, RESULTS = run.ROOT, run.BIN, run.RESULTS
LINE = 3000  # tickets polled: more than the rate admits during one run


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None, help="per wrk run (10, quick 5)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=int, default=100, help="admissions per second the shop sets")
    parser.add_argument("--port", type=int, default=18800)
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flashsale_bench"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (5 if args.quick else 10)
    args.servers = [servers.get("production")]
    return args


def waiting_room_product(conn, tag, rate):
    """A live product with the waiting room on and stock that never runs out."""
    product, = fixtures.make_products(conn, f"{tag}-line", 1, fixtures.NEVER_RUNS_OUT)
    with conn.cursor() as cur:
        cur.execute("UPDATE products SET waiting_room = true, admission_rate = %s WHERE id = %s", (rate, product))
    return product


async def _join(url, product, count, tag):
    async with aiohttp.ClientSession() as http:
        async def one(i):
            async with http.post(f"{url}/api/products/{product}/queue", json={"email": f"p{tag}.{i}@bench.example"},
                                 headers={"X-Forwarded-For": load.address(i, tag)}) as response:
                return (await response.json())["id"]
        return await asyncio.gather(*(one(i) for i in range(count)))


def admitted(client, product):
    return int(client.hget(f"fs:{{product:{product}}}:wr:state", "admitted") or 0), time.time()


def one_round(args, conn, n, log, client):
    tag = f"w{n}{int(time.time()) % 100000}"
    result = {}
    with run.web(args, args.servers[0], 0, log) as ((url, _), (base_url, _)):
        result["hello"] = load.wrk(base_url, ["/hello"], method="GET", seconds=args.seconds, tag=f"{tag}h",
                                   connections=args.clients)
        joins = waiting_room_product(conn, f"{tag}j", args.rate)
        result["join"] = load.wrk(url, [f"/api/products/{joins}/queue"], method="JOIN", seconds=args.seconds,
                                  tag=f"{tag}j", connections=args.clients)
        result["join"]["ok_per_s"] = sum(result["join"]["statuses"].get(s, 0) for s in (200, 201)) / \
            result["join"]["duration_s"]
        polled = waiting_room_product(conn, f"{tag}p", args.rate)
        tickets = asyncio.run(_join(url, polled, LINE, tag))
        before = admitted(client, polled)
        result["poll"] = load.wrk(url, [f"/api/queue/{t}" for t in tickets], method="GET", seconds=args.seconds,
                                  tag=f"{tag}p", connections=args.clients)
        after = admitted(client, polled)
        result["admitted"] = after[0] - before[0]
        result["admission_per_s"] = result["admitted"] / (after[1] - before[1])
        result["line_ran_dry"] = after[0] >= LINE  # then the measured rate says nothing
    print(f"  joins {result['join']['ok_per_s']:.0f}/s (hello {result['hello']['req_per_s']:.0f}/s); poll "
          f"{result['poll']['req_per_s']:.0f}/s p99 {result['poll']['p99_ms']:.0f} ms; admitted "
          f"{result['admission_per_s']:.1f}/s of {args.rate}/s", flush=True)
    return result


def table(rounds, args):
    med = lambda f: statistics.median(f(r) for r in rounds)  # noqa: E731
    hello = med(lambda r: r["hello"]["req_per_s"])
    joins = med(lambda r: r["join"]["ok_per_s"])
    return "\n".join([
        "| measurement | median | baseline, same run | ratio |", "|---|---:|---|---:|",
        f"| joins/s ({args.clients} clients, distinct shoppers) | {joins:.0f} | hello world {hello:.0f} req/s | "
        f"{joins / hello:.2f}x |",
        f"| join p50 / p99 | {med(lambda r: r['join']['p50_ms']):.0f} / {med(lambda r: r['join']['p99_ms']):.0f} ms"
        f" | | |",
        f"| position polls/s | {med(lambda r: r['poll']['req_per_s']):.0f} | | |",
        f"| position poll p50 / p99 | {med(lambda r: r['poll']['p50_ms']):.0f} / "
        f"{med(lambda r: r['poll']['p99_ms']):.0f} ms | | |",
        f"| admissions/s while polled | {med(lambda r: r['admission_per_s']):.1f} | set {args.rate}/s | "
        f"{med(lambda r: r['admission_per_s']) / args.rate:.2f}x |",
    ])


def main():
    args = parse_args()
    env = run.server_env(args)
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    fixtures.ensure_database(args.database_url)
    fixtures.reset_schema(args.database_url, [str(BIN / "flask")], env, ROOT)
    started = datetime.now(timezone.utc)
    RESULTS.mkdir(exist_ok=True)
    rounds = []
    with open(RESULTS / "waiting-room.log", "w") as log, closing(fixtures.connect(args.database_url)) as conn:
        for n in range(1, args.rounds + 1):
            print(f"round {n}/{args.rounds}", flush=True)
            rounds.append(one_round(args, conn, n, log, client))
    code, audit_output = run.audit(args)
    path = RESULTS / f"waiting-room-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"started_at": started.isoformat(), "machine": run.machine(),
                                "settings": {k: v for k, v in vars(args).items() if k != "servers"},
                                "rounds": rounds, "audit": audit_output}, indent=2, default=str))
    print("\n" + table(rounds, args) + f"\n\naudit: {audit_output}\nresults: {path.relative_to(ROOT)}")
    if code:
        sys.exit(1)


if __name__ == "__main__":
    main()
