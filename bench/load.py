"""Load generators: wrk (closed loop, N connections, fixed time) and an asyncio burst of distinct buyers."""

import asyncio
import json
import subprocess
import time
import zlib
from pathlib import Path

import aiohttp

LUA = Path(__file__).resolve().parent / "load.lua"


def wrk(base_url, paths, *, method="POST", connections=200, seconds=10, tag="x", threads=2):
    """Run wrk against `paths` (cycled) and return its counts and latency percentiles."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
           "-s", str(LUA), base_url, "--", method, tag, *paths]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
    result = json.loads(line[len("BENCHJSON "):])
    result["statuses"] = {int(k): v for k, v in result["statuses"].items()}
    result["ok_per_s"] = result["statuses"].get(201, 0) / result["duration_s"]
    result["req_per_s"] = result["requests"] / result["duration_s"]
    # Little's law: answers/s x mean latency = connections actually being served. wrk's percentiles
    # only cover answered requests, so a server that serves some keep-alive connections and leaves
    # the rest waiting looks fast; this number shows it (it should be close to `connections`).
    result["served_connections"] = result["req_per_s"] * result["mean_ms"] / 1000
    result["connections"] = connections
    return result


def percentile(ordered, p):
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def address(i, tag):
    """Buyer i's client address (10.x.y.z, from a block the tag picks), for X-Forwarded-For."""
    a = (zlib.crc32(tag.encode()) + i) % (1 << 24)
    return f"10.{a >> 16}.{a >> 8 & 255}.{a & 255}"


def burst(url, buyers, tag):
    """`buyers` distinct buyers (own email, own address) POST a hold at once, each on its own connection."""
    return asyncio.run(_burst(url, buyers, tag))


async def _burst(url, buyers, tag):
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    go = asyncio.Event()
    results = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def buyer(i):
            await go.wait()
            body = {"email": f"burst{tag}.{i}@bench.example", "quantity": 1}
            try:
                async with http.post(url, json=body,
                                     headers={"X-Forwarded-For": address(i, tag)}) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            results.append((status, time.perf_counter() - started))

        tasks = [asyncio.create_task(buyer(i)) for i in range(buyers)]
        await asyncio.sleep(0.2)  # every buyer is parked on the starting line
        started, started_epoch = time.perf_counter(), time.time()
        go.set()
        await asyncio.gather(*tasks)
    statuses = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    latencies = sorted(t for _, t in results)
    won = sorted(t for status, t in results if status == 201)
    return {
        "buyers": buyers,
        "started_epoch": started_epoch,
        "statuses": statuses,
        "won": len(won),
        "sold_out_s": won[-1] if won else None,
        "all_answered_s": latencies[-1],
        "answer_100_s": latencies[99] if len(latencies) >= 100 else None,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def start_watchers(url, watchers, seconds):
    """A separate process of `watchers` pages polling `url` at the pace the server gives (see _watch)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, __file__, "watch", url, str(watchers), str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def stop_watchers(proc):
    """Stop the watchers' process; returns what they did (polls, statuses, the paces they were given)."""
    import signal

    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


async def _watch(url, watchers, seconds):
    """Each watcher is a product page: open at a random instant in the first 3 s, then poll with its ETag,
    waiting the server's Poll-Seconds with the page's jitter (x0.75-1.25) between polls."""
    import random
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    asyncio.get_running_loop().call_later(seconds, stop.set)
    statuses, paces, started = {}, [], time.monotonic()
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def pause(wait):
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass

        async def watcher(i):
            await pause(random.uniform(0, 3))
            etag, pace = None, 3.0
            while not stop.is_set():
                headers = {"X-Forwarded-For": address(i, "watchers")}
                if etag:
                    headers["If-None-Match"] = etag
                try:
                    async with http.get(url, headers=headers) as response:
                        await response.read()
                        status = response.status
                        etag = response.headers.get("ETag", etag)
                        pace = float(response.headers.get("Poll-Seconds", pace))
                except (TimeoutError, aiohttp.ClientError):
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
                paces.append(pace)
                await pause(pace * random.uniform(0.75, 1.25))

        await asyncio.gather(*[watcher(i) for i in range(watchers)])
    elapsed = time.monotonic() - started
    polls = sum(statuses.values())
    recent = sorted(paces[-watchers:])
    return {"watchers": watchers, "polls": polls, "seconds": elapsed, "polls_per_s": polls / elapsed,
            "statuses": statuses, "pace_p50_s": percentile(recent, 50), "pace_max_s": recent[-1] if recent else None}


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "watch":
        print(json.dumps(asyncio.run(_watch(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))), flush=True)
