"""The benchmark: the product under its production gunicorn config against ceilings and baselines, one run.

    .venv/bin/python bench/run.py            # 3 rounds of 10 s per scenario (about 6 minutes)
    .venv/bin/python bench/run.py --quick    # 1 round of 4 s per scenario (about 1.5 minutes)

It resets its own database (default flashsale_bench) and Redis db (default 5), migrates and seeds them,
starts gunicorn with gunicorn.conf.py for the app and for bench/baselines.py plus `flask worker`, runs
every scenario each round with wrk (and an asyncio burst), prints one table of medians, spreads and
ratios, writes JSON to bench/results/, runs `flask audit`, and exits non-zero on any oversell or breach.
"""

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import time
import urllib.request
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixtures  # noqa: E402
import load  # noqa: E402
import report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
BURST_UNITS = 100  # seeds/ps5-drop.yaml


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument("--seconds", type=int, default=None, help="seconds per scenario (10, quick 4)")
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (hot product)")
    parser.add_argument("--burst", type=int, default=5000, help="buyers in the burst")
    parser.add_argument("--history", type=int, default=100_000, help="units already sold (sale size)")
    parser.add_argument("--port", type=int, default=18600, help="app port; baselines use port+1")
    parser.add_argument("--database-url",
                        default=os.environ.get("BENCH_DATABASE_URL",
                                               "postgresql://postgres@127.0.0.1:5432/flashsale_bench"))
    parser.add_argument("--redis-url",
                        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
    parser.add_argument("--label", default="", help="a note stored with the results")
    parser.add_argument("--profile", default=None, metavar="SCENARIO",
                        help="record the app's gunicorn with py-spy during SCENARIO (e.g. hot)")
    parser.add_argument("--only", default=None, help="comma-separated scenarios to run (debugging)")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (4 if args.quick else 10)
    return args


def server_env(args, **extra):
    """The production configuration, pointed at the benchmark's database and Redis, limits off."""
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url,
        "FLASHSALE_ENV": "production", "SECRET_KEY": "bench-not-secret",
        "RATELIMIT_ENABLED": "false", "LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT),
        "FLASK_APP": "app",
        # One pooled connection per gunicorn thread (gunicorn.conf.py's WEB_THREADS default), for the
        # app and the baselines alike.
        "DB_POOL_SIZE": os.environ.get("DB_POOL_SIZE", os.environ.get("WEB_THREADS", "16")),
    })
    env.update(extra)
    return env


@contextmanager
def servers(args):
    """gunicorn (app), gunicorn (baselines) and `flask worker`, each in its own process group."""
    env = server_env(args)
    gunicorn = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"]
    specs = [
        (gunicorn + ["app:app"], {"BIND": f"127.0.0.1:{args.port}"}),
        (gunicorn + ["bench.baselines:app"], {"BIND": f"127.0.0.1:{args.port + 1}"}),
        ([str(BIN / "flask"), "worker"], {}),
    ]
    RESULTS.mkdir(exist_ok=True)
    log = open(RESULTS / "servers.log", "w")  # noqa: SIM115 - closed with the servers
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, **extra}, start_new_session=True,
                              stdout=log, stderr=subprocess.STDOUT)
             for cmd, extra in specs]
    try:
        wait_ready(f"http://127.0.0.1:{args.port}/healthz")
        wait_ready(f"http://127.0.0.1:{args.port + 1}/hello")
        yield procs
    finally:
        log.close()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def wait_ready(url, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout}s")


def one_round(args, conn, n, procs):
    """Every scenario once, on products made fresh for this round."""
    app = f"http://127.0.0.1:{args.port}"
    base = f"http://127.0.0.1:{args.port + 1}"
    tag = f"r{n}{secrets.token_hex(3)}"
    secs, clients = args.seconds, args.clients
    big = fixtures.NEVER_RUNS_OUT
    hot, = fixtures.make_products(conn, f"{tag}-hot", 1, big)
    lockfree, = fixtures.make_products(conn, f"{tag}-lockfree", 1, big)
    fixtures.fund_baseline(conn, lockfree, big)
    naive, = fixtures.make_products(conn, f"{tag}-naive", 1, big)
    gone, = fixtures.make_products(conn, f"{tag}-soldout", 1, 0)
    many = fixtures.make_products(conn, f"{tag}-many", 100, big)
    empty, = fixtures.make_products(conn, f"{tag}-size0", 1, big)
    full, = fixtures.make_products(conn, f"{tag}-sizefull", 1, big + args.history)
    fixtures.add_sold_history(conn, full, args.history)
    holds = "/api/products/{}/holds".format
    result = {"loadavg_before": os.getloadavg()}

    def run(name, url, paths, **kw):
        if args.only and name not in args.only.split(","):
            return
        profiler = start_profile(args, name, procs[0].pid, n)
        result[name] = load.wrk(url, paths, seconds=secs, tag=f"{tag}{name}", **kw)
        if profiler:
            profiler.wait()
        print(f"  {name:<10} {report.brief(result[name])}", flush=True)

    run("hello", base, ["/hello"], method="GET", connections=clients)
    run("soldout", app, [holds(gone)], connections=clients)
    run("redis2", base, [f"/redis/{gone}/holds"], connections=clients)
    run("hot", app, [holds(hot)], connections=clients)
    run("lockfree", base, [f"/baseline/{lockfree}/holds"], connections=clients)
    run("naive", base, [f"/naive/{naive}/holds"], connections=clients)
    run("many", app, [holds(pid) for pid in many], connections=clients)
    run("size0", app, [holds(empty)], connections=16)
    run("sizefull", app, [holds(full)], connections=16)

    if not args.only or "burst" in args.only.split(","):
        # The floor under the burst: the same storm of connections at the hello-world route.
        result["burst_hello"] = load.burst(f"{base}/hello", args.burst, f"{tag}h")
        print(f"  burst_hello 100th answer {result['burst_hello']['answer_100_s']:.2f} s, all "
              f"{result['burst_hello']['all_answered_s']:.2f} s", flush=True)
        run_burst(args, conn, app, tag, result)
    if "soldout" in result:
        result["soldout"]["created"] = result["soldout"]["statuses"].get(201, 0)
    result["loadavg_after"] = os.getloadavg()
    return result


def run_burst(args, conn, app, tag, result):
    """Start ps5-drop over (100 units, no holds) and fire the burst of distinct buyers at it."""
    # The burst only holds, so --reset needs no --delete-paid-orders; were ps5 ever paid for, it would refuse.
    subprocess.run([str(BIN / "flask"), "seed", "ps5-drop", "--reset"], cwd=ROOT, env=server_env(args),
                   check=True, capture_output=True)
    ps5 = fixtures.product_id(conn, "ps5")
    time.sleep(2.5)  # let every web process's 2 s sale-info cache forget the previous round's ps5
    result["burst"] = load.burst(f"{app}/api/products/ps5/holds", args.burst, tag)
    burst = result["burst"]
    burst["orders"], burst["events"] = fixtures.count_holds(conn, ps5)
    last = fixtures.last_hold_epoch(conn, ps5)
    # Sold out = the last unit taken, by the database clock (same machine, same clock as the client).
    burst["last_unit_s"] = last - burst["started_epoch"] if last is not None else None
    print(f"  burst      {report.brief_burst(result['burst'])}", flush=True)


def start_profile(args, scenario, gunicorn_pid, n):
    """py-spy on the app's gunicorn (master and workers) for this scenario, as collapsed stacks."""
    if args.profile != scenario:
        return None
    out = RESULTS / f"profile-{scenario}-{os.environ.get('BENCH_PROFILE', 'cpu')}-r{n}.txt"
    # BENCH_PROFILE=gil: only threads holding the GIL (Python CPU); idle: wall clock, waits included.
    mode = {"gil": ["--gil"], "idle": ["--idle"]}.get(os.environ.get("BENCH_PROFILE", ""), [])
    return subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(gunicorn_pid), *mode,
                             "--subprocesses", "--format", "raw", "--rate", "200",
                             "--duration", str(args.seconds), "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def audit(args):
    out = subprocess.run([str(BIN / "flask"), "audit"], cwd=ROOT, env=server_env(args),
                         capture_output=True, text=True)
    return out.returncode, (out.stdout + out.stderr).strip()


def machine():
    return {
        "nproc": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip(),
    }


def main():
    args = parse_args()
    env = server_env(args)
    print(f"resetting {args.database_url} and {args.redis_url}", flush=True)
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    fixtures.reset_schema(args.database_url, [str(BIN / "flask")], env, ROOT)
    subprocess.run([str(BIN / "flask"), "seed", "ps5-drop"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    started = datetime.now(timezone.utc)
    rounds = []
    with servers(args) as procs, closing(fixtures.connect(args.database_url)) as conn:
        for n in range(1, args.rounds + 1):
            print(f"round {n}/{args.rounds} (load average {os.getloadavg()[0]:.2f})", flush=True)
            rounds.append(one_round(args, conn, n, procs))
    code, audit_output = audit(args)
    summary = report.summarise(rounds)
    problems = report.problems(rounds, BURST_UNITS) + ([f"flask audit failed: {audit_output}"]
                                                      if code else [])
    document = {
        "started_at": started.isoformat(), "label": args.label, "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("database_url", "redis_url")},
        "rounds": rounds, "summary": summary, "audit": audit_output, "problems": problems,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(document, indent=2))
    print()
    print(report.table(summary, document["machine"], args))
    print(f"\naudit: {audit_output}\nresults: {path.relative_to(ROOT)}")
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        sys.exit(1)


if __name__ == "__main__":
    main()
