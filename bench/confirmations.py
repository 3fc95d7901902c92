"""The confirmation path: how fast accepted confirmations become CONFIRMED, with a slow gateway.

    .venv/bin/python bench/confirmations.py            # 3 rounds (about 4 minutes)
    .venv/bin/python bench/confirmations.py --quick    # 1 round, fewer confirmations

Production config as in bench/run.py (the Procfile's web server, rate limits on, distinct buyers), a
fake gateway taking FAKE_PAYMENT_DELAY_MS (250) per charge. Each round, for 1 and 2 `flask worker`
processes: N winners confirm at once; confirmations/s and the p50/p99 from 202 to CONFIRMED are read
off the database clock (confirmation_requested_at -> confirmed_at). In the same round the serial
ceiling is measured (one worker, PAYMENT_CONCURRENCY=1: one charge at a time, what a worker did before
payments were recorded and pooled), and hot-product holds/s are measured alone and while confirmations
pour in. Prints a table of medians, writes bench/results/confirmations-*.json, runs `flask audit`.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import redis
from rq import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixtures  # noqa: E402
import load  # noqa: E402
import run  # noqa: E402
import servers  # noqa: E402

ROOT, BIN, RESULTS = run.ROOT, run.BIN, run.RESULTS


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, fewer confirmations")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--confirms", type=int, default=None, help="winners confirming at once (300)")
    parser.add_argument("--serial-confirms", type=int, default=None, help="for the serial ceiling (24)")
    parser.add_argument("--delay-ms", type=int, default=250, help="the fake gateway's charge latency")
    parser.add_argument("--seconds", type=int, default=8, help="hot-product wrk run, alone and loaded")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--port", type=int, default=18700)
    parser.add_argument("--profile", action="store_true",
                        help="record the single worker with py-spy while it confirms (bench/results/)")
    parser.add_argument("--database-url",
                        default=os.environ.get("BENCH_DATABASE_URL",
                                               "postgresql://postgres@127.0.0.1:5432/flashsale_bench"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.confirms = args.confirms or (120 if args.quick else 300)
    args.serial_confirms = args.serial_confirms or (12 if args.quick else 24)
    args.servers = [servers.get("production")]
    return args


@contextmanager
def workers(args, count, log, **env):
    """`count` `flask worker` processes with the slow fake gateway."""
    environment = run.server_env(args, FAKE_PAYMENT_DELAY_MS=str(args.delay_ms), **env)
    procs = [subprocess.Popen([str(BIN / "flask"), "worker"], cwd=ROOT, env=environment,
                              start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
             for _ in range(count)]
    try:
        connection = redis.Redis.from_url(args.redis_url)
        deadline = time.monotonic() + 30
        while Worker.count(connection=connection) < count:  # registered: listening on the queue
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers did not register within 30 s")
            time.sleep(0.1)
        yield procs
    finally:
        for proc in procs:
            run.stop(proc)


async def _place_and_confirm(url, product, buyers, tag, at_once=True):
    """Place one hold per buyer (100 at a time), then confirm them all at once; returns hold ids."""
    connector = aiohttp.TCPConnector(limit=0 if at_once else 100)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        gate = asyncio.Semaphore(100)

        async def place(i):
            async with gate, http.post(f"{url}/api/products/{product}/holds",
                                       json={"email": f"c{tag}.{i}@bench.example"},
                                       headers={"X-Forwarded-For": load.address(i, tag)}) as response:
                body = await response.json()
                assert response.status == 201, body
                return body["id"]

        ids = await asyncio.gather(*(place(i) for i in range(buyers)))
        go = asyncio.Event()

        async def confirm(hold_id):
            await go.wait()
            async with http.post(f"{url}/api/holds/{hold_id}/confirm") as response:
                await response.read()
                assert response.status == 202, response.status

        tasks = [asyncio.create_task(confirm(h)) for h in ids]
        await asyncio.sleep(0.1)
        go.set()
        await asyncio.gather(*tasks)
        return ids


def machine_busy():
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def confirm_all(conn, url, buyers, tag, timeout=600):
    """A fresh sale, `buyers` holds, all confirmed at once; waits for every CONFIRMED; the figures."""
    product, = fixtures.make_products(conn, f"{tag}-confirm", 1, buyers)
    busy_before = machine_busy()
    asyncio.run(_place_and_confirm(url, product, buyers, tag))
    deadline = time.monotonic() + timeout
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FILTER (WHERE status = 'CONFIRMED'), count(*) FROM orders "
                        "WHERE product_id = %s", (product,))
            confirmed, total = cur.fetchone()
        if confirmed == total or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    busy_after = machine_busy()
    with conn.cursor() as cur:
        cur.execute("""SELECT extract(epoch FROM confirmed_at - confirmation_requested_at),
                              extract(epoch FROM confirmation_requested_at), extract(epoch FROM confirmed_at)
                       FROM orders WHERE product_id = %s AND status = 'CONFIRMED'""", (product,))
        rows = cur.fetchall()
    waits = sorted(float(w) for w, _, _ in rows)
    span = max(float(c) for _, _, c in rows) - min(float(a) for _, a, _ in rows)
    # How fast the web servers accepted the 300 confirms: the rate the worker cannot beat.
    accepts = max(float(a) for _, a, _ in rows) - min(float(a) for _, a, _ in rows)
    return {"confirms": buyers, "confirmed": confirmed, "per_s": confirmed / span if span else None,
            "span_s": span, "accepted_per_s": confirmed / accepts if accepts else None,
            # Share of the machine's CPUs busy from the first hold placed to the last confirmation.
            "machine_busy": (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1]),
            "p50_ms": load.percentile(waits, 50) * 1000,
            "p99_ms": load.percentile(waits, 99) * 1000}


def hot_while_confirming(args, conn, url, tag):
    """Hot-product holds/s while a stream of confirmations is paid (a background burst of them)."""
    product, = fixtures.make_products(conn, f"{tag}-stream", 1, args.confirms)
    hot, = fixtures.make_products(conn, f"{tag}-hot2", 1, fixtures.NEVER_RUNS_OUT)
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys, asyncio; sys.path.insert(0, 'bench'); import confirmations as c; "
        f"asyncio.run(c._place_and_confirm({url!r}, {product}, {args.confirms}, {tag + 's'!r}))")],
        cwd=ROOT)
    time.sleep(1.0)  # the holds are placed and the confirmations start pouring in
    loaded = load.wrk(url, [f"/api/products/{hot}/holds"], seconds=args.seconds, tag=f"{tag}hl",
                      connections=args.clients)
    proc.wait(timeout=120)
    return loaded


def one_round(args, conn, n, log):
    tag = f"c{n}{int(time.time()) % 100000}"
    result = {}
    with run.web(args, args.servers[0], 0, log) as ((url, _proc), _base):
        with workers(args, 1, log, PAYMENT_CONCURRENCY="1"):
            result["serial"] = confirm_all(conn, url, args.serial_confirms, f"{tag}s")
            print(f"  serial (1 worker, 1 charge at a time): {result['serial']['per_s']:.1f}/s", flush=True)
        for count in (1, 2):
            with workers(args, count, log) as procs:
                name = f"workers{count}"
                profiler = None
                if args.profile and count == 1:
                    mode, mode_name = run.profile_mode()
                    profiler = subprocess.Popen(
                        [str(BIN / "py-spy"), "record", "--pid", str(procs[0].pid), *mode, "--format", "raw",
                         "--rate", "200", "--duration", "6", "--output",
                         str(RESULTS / f"profile-worker-{mode_name}-r{n}.txt")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                result[name] = confirm_all(conn, url, args.confirms, f"{tag}w{count}")
                if profiler:
                    profiler.wait()
                print(f"  {count} worker(s): {result[name]['per_s']:.1f} confirmations/s, p50 "
                      f"{result[name]['p50_ms']:.0f} ms, p99 {result[name]['p99_ms']:.0f} ms", flush=True)
                if count == 1:
                    hot, = fixtures.make_products(conn, f"{tag}-hot", 1, fixtures.NEVER_RUNS_OUT)
                    result["hot_alone"] = load.wrk(url, [f"/api/products/{hot}/holds"], seconds=args.seconds,
                                                   tag=f"{tag}ha", connections=args.clients)
                    result["hot_confirming"] = hot_while_confirming(args, conn, url, tag)
                    print(f"  hot product alone {result['hot_alone']['ok_per_s']:.0f} holds/s, while "
                          f"confirming {result['hot_confirming']['ok_per_s']:.0f} holds/s", flush=True)
    return result


def median(rounds, *path):
    values = []
    for r in rounds:
        value = r
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def table(rounds, args):
    delay = args.delay_ms / 1000
    rows = ["| measurement | median | ceiling or baseline, same run | ratio |", "|---|---:|---|---:|"]
    serial = median(rounds, "serial", "per_s")
    for count in (1, 2):
        rate = median(rounds, f"workers{count}", "per_s")
        rows.append(f"| {args.confirms} confirmations at once, {count} worker(s): confirmations/s | "
                    f"{rate:.0f} | serial measured {serial:.1f}/s (ceiling {count}/{delay:g} s = "
                    f"{count / delay:.0f}/s) | {rate / (count / delay):.1f}x the serial ceiling |")
        rows.append(f"| same, 202 -> CONFIRMED p50 / p99 | {median(rounds, f'workers{count}', 'p50_ms'):.0f} / "
                    f"{median(rounds, f'workers{count}', 'p99_ms'):.0f} ms | the web servers accepted "
                    f"{median(rounds, f'workers{count}', 'accepted_per_s'):.0f} confirms/s; machine CPUs "
                    f"{100 * median(rounds, f'workers{count}', 'machine_busy'):.0f} % busy | |")
    alone = median(rounds, "hot_alone", "ok_per_s")
    loaded = median(rounds, "hot_confirming", "ok_per_s")
    rows.append(f"| hot product while confirmations are paid: holds/s | {loaded:.0f} | alone {alone:.0f} | "
                f"{loaded / alone:.2f}x |")
    rows.append(f"| same, p99 | {median(rounds, 'hot_confirming', 'p99_ms'):.0f} ms | alone "
                f"{median(rounds, 'hot_alone', 'p99_ms'):.0f} ms | |")
    return "\n".join(rows)


def main():
    args = parse_args()
    env = run.server_env(args)
    redis.Redis.from_url(args.redis_url).flushdb()
    fixtures.ensure_database(args.database_url)
    fixtures.reset_schema(args.database_url, [str(BIN / "flask")], env, ROOT)
    started = datetime.now(timezone.utc)
    RESULTS.mkdir(exist_ok=True)
    rounds = []
    with open(RESULTS / "confirmations.log", "w") as log, closing(fixtures.connect(args.database_url)) as conn:
        for n in range(1, args.rounds + 1):
            print(f"round {n}/{args.rounds}", flush=True)
            rounds.append(one_round(args, conn, n, log))
    code, audit_output = run.audit(args)
    document = {"started_at": started.isoformat(), "machine": run.machine(),
                "settings": {k: v for k, v in vars(args).items() if k not in ("servers",)},
                "rounds": rounds, "audit": audit_output}
    path = RESULTS / f"confirmations-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(document, indent=2, default=str))
    print("\n" + table(rounds, args) + f"\n\naudit: {audit_output}\nresults: {path.relative_to(ROOT)}")
    unconfirmed = [r[k]["confirms"] - r[k]["confirmed"] for r in rounds for k in ("serial", "workers1", "workers2")]
    if code or any(unconfirmed):
        print("FAILED: " + (audit_output if code else f"{sum(unconfirmed)} confirmations never confirmed"))
        sys.exit(1)


if __name__ == "__main__":
    main()
