"""The benchmark: the product in its production config against ceilings and baselines, one run.

    .venv/bin/python bench/run.py            # 3 rounds of 10 s per scenario (about 8 minutes)
    .venv/bin/python bench/run.py --quick    # 1 round of 4 s per scenario (about 1.5 minutes)
    .venv/bin/python bench/run.py --servers gunicorn,granian,uwsgi   # the server comparison

It creates (when missing) and resets its own database (default flashsale_bench) and Redis db (default
5), migrates them, starts `flask worker` and, each round, the Procfile's web command for the app and for
bench/baselines.py (or each server of --servers in turn), runs every scenario with wrk (and an asyncio
burst) as distinct buyers from distinct addresses with the rate limits on, measures the servers' CPU
per request, prints one table of medians, spreads and ratios, writes JSON to bench/results/, runs
`flask audit`, and exits non-zero on any oversell or breach.
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
import servers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
BURST_UNITS = 100  # like seeds/ps5-drop.yaml: 100 units, one per customer
# What the server comparison measures (the default --only when several servers are given).
COMPARED = "hello,soldout,hot,lockfree,burst"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument("--seconds", type=int, default=None, help="seconds per scenario (10, quick 4)")
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (hot product)")
    parser.add_argument("--burst", type=int, default=5000, help="buyers in the burst")
    parser.add_argument("--history", type=int, default=100_000, help="units already sold (sale size)")
    parser.add_argument("--port", type=int, default=18600, help="app port; baselines use port+1")
    parser.add_argument("--servers", default="production",
                        help="comma-separated web servers, run in turn each round: production (the "
                             f"Procfile's), {', '.join(servers.CANDIDATES)}")
    parser.add_argument("--database-url",
                        default=os.environ.get("BENCH_DATABASE_URL",
                                               "postgresql://postgres@127.0.0.1:5432/flashsale_bench"))
    parser.add_argument("--redis-url",
                        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
    parser.add_argument("--label", default="", help="a note stored with the results")
    parser.add_argument("--profile", default=None, metavar="SCENARIO",
                        help="record the app's web server with py-spy during SCENARIO (e.g. hot)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated scenarios to run (several servers: {COMPARED})")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (4 if args.quick else 10)
    args.servers = [servers.get(name) for name in args.servers.split(",")]
    if args.only is None and len(args.servers) > 1:
        args.only = COMPARED
    return args


def server_env(args, **extra):
    """The production configuration (docs/production.md), pointed at the benchmark's database and Redis.

    Rate limits are on at their defaults, behind one trusted proxy: every simulated buyer comes from
    its own address (X-Forwarded-For) with its own email, so the limits are checked on every hold
    and never trigger, as for a crowd of real shoppers behind a load balancer.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RATELIMIT_", "WEB_", "GRANIAN_", "UWSGI_")) and k != "DB_POOL_SIZE"}
    env.update({
        "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url,
        "FLASHSALE_ENV": "production", "SECRET_KEY": "bench-not-secret",
        "ADMIN_TOKEN": "bench-admin-token", "TRUSTED_PROXIES": "1", "RATELIMIT_ENABLED": "true",
        "LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT), "FLASK_APP": "app",
    })
    env.update(extra)
    return env


@contextmanager
def worker(args, log):
    """`flask worker` (RQ with the scheduler and the sweeper), for the whole run."""
    proc = subprocess.Popen([str(BIN / "flask"), "worker"], cwd=ROOT, env=server_env(args),
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)


@contextmanager
def web(args, server, offset, log):
    """The app and the baselines under `server`, each in its own process group; yields (app, base)."""
    env = server_env(args)
    port = args.port + 2 * offset  # a port pair per server: no waiting for the previous one's sockets
    log.write(f"\n===== {server.name}: {server.about}\n")
    log.flush()
    procs = []
    try:
        for target, at in (("app:app", port), ("bench.baselines:app", port + 1)):
            procs.append(subprocess.Popen(
                server.command(BIN, target, HOST, at), cwd=ROOT,
                env={**env, **server.environment(HOST, at)}, start_new_session=True,
                stdout=log, stderr=subprocess.STDOUT))
        wait_ready(f"http://{HOST}:{port}/healthz", procs[0])
        wait_ready(f"http://{HOST}:{port + 1}/hello", procs[1])
        yield (f"http://{HOST}:{port}", procs[0]), (f"http://{HOST}:{port + 1}", procs[1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in procs:
            stop(proc)


def stop(proc, timeout=30):
    """SIGTERM a process group, SIGKILL it if it has not exited within timeout."""
    try:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    except ProcessLookupError:
        pass


def wait_ready(url, proc, timeout=60):
    """Poll url until it answers 200; fail at once if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}: see "
                               f"{(RESULTS / 'servers.log').relative_to(ROOT)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout}s")


def one_round(args, conn, n, server, app, base):
    """Every scenario once under one server, on products made fresh for this round."""
    (app_url, app_proc), (base_url, base_proc) = app, base
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
    if wanted(args, "sizefull"):
        fixtures.add_sold_history(conn, full, args.history)
    holds = "/api/products/{}/holds".format
    result = {"server": server.name, "loadavg_before": os.getloadavg()}

    def run(name, proc, url, paths, **kw):
        if not wanted(args, name):
            return
        profiler = start_profile(args, name, proc.pid, n)
        before = servers.cpu_seconds(proc.pid)
        result[name] = load.wrk(url, paths, seconds=secs, tag=f"{tag}{name}", **kw)
        add_cpu(result[name], servers.cpu_seconds(proc.pid) - before, result[name]["requests"])
        if profiler:
            profiler.wait()
        print(f"  {name:<10} {report.brief(result[name])}", flush=True)

    run("hello", base_proc, base_url, ["/hello"], method="GET", connections=clients)
    # Watching: the app's own 404 under /api/ is the floor a poll is compared with (same middleware,
    # same error handler), then what a program polls and what the product page polls.
    run("floor404", app_proc, app_url, ["/api/no-such-thing"], method="GET", connections=clients)
    run("poll", app_proc, app_url, [f"/api/products/{hot}"], method="GET", connections=clients)
    run("pollpage", app_proc, app_url, [f"/products/{hot}/stock"], method="GET", connections=clients)
    run("soldout", app_proc, app_url, [holds(gone)], connections=clients)
    run("redis2", base_proc, base_url, [f"/redis/{gone}/holds"], connections=clients)
    run("hot", app_proc, app_url, [holds(hot)], connections=clients)
    run("lockfree", base_proc, base_url, [f"/baseline/{lockfree}/holds"], connections=clients)
    run("naive", base_proc, base_url, [f"/naive/{naive}/holds"], connections=clients)
    run("many", app_proc, app_url, [holds(pid) for pid in many], connections=clients)
    run("size0", app_proc, app_url, [holds(empty)], connections=16)
    run("sizefull", app_proc, app_url, [holds(full)], connections=16)

    if wanted(args, "burst"):
        # The floor under the burst: the same storm of connections at the hello-world route.
        before = servers.cpu_seconds(base_proc.pid)
        result["burst_hello"] = load.burst(f"{base_url}/hello", args.burst, f"{tag}h")
        add_cpu(result["burst_hello"], servers.cpu_seconds(base_proc.pid) - before, args.burst)
        print(f"  burst_hello 100th answer {result['burst_hello']['answer_100_s']:.2f} s, all "
              f"{result['burst_hello']['all_answered_s']:.2f} s", flush=True)
        run_burst(args, conn, app_url, app_proc, tag, result)
    if wanted(args, "burst_watched"):
        run_burst_watched(args, conn, app_url, app_proc, tag, result)
    if "soldout" in result:
        result["soldout"]["created"] = result["soldout"]["statuses"].get(201, 0)
    result["loadavg_after"] = os.getloadavg()
    return result


def wanted(args, scenario):
    """Whether --only (if given) includes this scenario."""
    return not args.only or scenario in args.only.split(",")


def add_cpu(result, seconds, requests):
    """Record the server's CPU time over a scenario, in total and per request answered."""
    result["cpu_s"] = seconds
    result["cpu_ms_per_request"] = 1000 * seconds / requests if requests else None


def run_burst(args, conn, app_url, app_proc, tag, result):
    """Fire the burst of distinct buyers at a fresh sale of 100 units, one per customer."""
    product, = fixtures.make_products(conn, f"{tag}-burst", 1, BURST_UNITS)
    before = servers.cpu_seconds(app_proc.pid)
    result["burst"] = load.burst(f"{app_url}/api/products/{product}/holds", args.burst, tag)
    burst = result["burst"]
    add_cpu(burst, servers.cpu_seconds(app_proc.pid) - before, args.burst)
    burst["orders"], burst["events"] = fixtures.count_holds(conn, product)
    last = fixtures.last_hold_epoch(conn, product)
    # Sold out = the last unit taken, by the database clock (same machine, same clock as the client).
    burst["last_unit_s"] = last - burst["started_epoch"] if last is not None else None
    print(f"  burst      {report.brief_burst(result['burst'])}", flush=True)


WATCH_WARMUP_S = 12  # pages open over 3 s, then the server's pace settles for the crowd


def run_burst_watched(args, conn, app_url, app_proc, tag, result):
    """The same burst while as many watchers poll the sale's product page at the pace the server gives."""
    product, = fixtures.make_products(conn, f"{tag}-watched", 1, BURST_UNITS)
    watchers = load.start_watchers(f"{app_url}/products/{product}/stock", args.burst, WATCH_WARMUP_S + 120)
    time.sleep(WATCH_WARMUP_S)
    before = servers.cpu_seconds(app_proc.pid)
    result["burst_watched"] = burst = load.burst(f"{app_url}/api/products/{product}/holds", args.burst,
                                                 tag + "w")
    add_cpu(burst, servers.cpu_seconds(app_proc.pid) - before, args.burst)
    result["watchers"] = load.stop_watchers(watchers)
    burst["orders"], burst["events"] = fixtures.count_holds(conn, product)
    last = fixtures.last_hold_epoch(conn, product)
    burst["last_unit_s"] = last - burst["started_epoch"] if last is not None else None
    w = result["watchers"]
    print(f"  burst+watch {report.brief_burst(burst)}\n  watchers   {w['watchers']} polled "
          f"{w['polls_per_s']:.0f}/s, pace p50 {w['pace_p50_s']} s, statuses {w['statuses']}", flush=True)


def profile_mode():
    """py-spy's options and the file-name word for BENCH_PROFILE: gil, only threads holding the GIL
    (Python CPU); idle, wall clock with waits included; unset, py-spy's default (cpu)."""
    name = os.environ.get("BENCH_PROFILE", "cpu")
    return {"gil": ["--gil"], "idle": ["--idle"]}.get(name, []), name


def start_profile(args, scenario, server_pid, n):
    """py-spy on the app's web server (master and workers) for this scenario, as collapsed stacks."""
    if args.profile != scenario:
        return None
    mode, name = profile_mode()
    out = RESULTS / f"profile-{scenario}-{name}-r{n}.txt"
    return subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(server_pid), *mode,
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


def run_rounds(args):
    """Every round; within a round each server in turn (the order rotating), freshly started."""
    by_server = {server.name: [] for server in args.servers}
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "servers.log", "w") as log, worker(args, log), \
            closing(fixtures.connect(args.database_url)) as conn:
        for n in range(1, args.rounds + 1):
            shift = (n - 1) % len(args.servers)
            for offset, server in enumerate(args.servers[shift:] + args.servers[:shift]):
                print(f"round {n}/{args.rounds}, {server.name} (load average "
                      f"{os.getloadavg()[0]:.2f})", flush=True)
                with web(args, server, offset, log) as (app, base):
                    by_server[server.name].append(one_round(args, conn, n, server, app, base))
    return by_server


def main():
    args = parse_args()
    env = server_env(args)
    print(f"resetting {args.database_url} and {args.redis_url}", flush=True)
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    fixtures.ensure_database(args.database_url)
    fixtures.reset_schema(args.database_url, [str(BIN / "flask")], env, ROOT)
    started = datetime.now(timezone.utc)
    by_server = run_rounds(args)
    code, audit_output = audit(args)
    first = args.servers[0].name
    summaries = {name: report.summarise(rounds) for name, rounds in by_server.items()}
    problems = [f"{name}: {problem}" for name, rounds in by_server.items()
                for problem in report.problems(rounds, BURST_UNITS)]
    problems += [f"flask audit failed: {audit_output}"] if code else []
    document = {
        "started_at": started.isoformat(), "label": args.label, "machine": machine(),
        "settings": {**{k: v for k, v in vars(args).items()
                        if k not in ("database_url", "redis_url", "servers")},
                     "servers": {s.name: s.about for s in args.servers}},
        # The first server's rounds and summary, where a single-server run has always kept them.
        "rounds": by_server[first], "summary": summaries[first],
        "servers": {name: {"rounds": by_server[name], "summary": summaries[name]}
                    for name in by_server},
        "audit": audit_output, "problems": problems,
    }
    path = RESULTS / f"{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(document, indent=2))  # the raw rounds first: a run is minutes long
    if len(by_server) > 1:
        document["comparison"] = report.compare(by_server, first)
        path.write_text(json.dumps(document, indent=2))
    print()
    for server in args.servers:
        print(f"## {server.name}: {server.about}\n")
        print(report.table(summaries[server.name], document["machine"], args) + "\n")
    if len(by_server) > 1:
        print(report.comparison_table(document["comparison"], args) + "\n")
    print(f"audit: {audit_output}\nresults: {path.relative_to(ROOT)}")
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        sys.exit(1)


if __name__ == "__main__":
    main()
