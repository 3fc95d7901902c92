"""Fault: the web server (webserver.py, granian) replaces its workers during a burst, by a graceful
reload (SIGHUP, a deploy) and by recycling (WEB_MAX_RSS), and drains on SIGTERM. No accepted hold is
lost: every 201 a client got is in the database, any request whose connection broke is resolved by
replaying its Idempotency-Key, and a request in flight when SIGTERM arrives still gets its answer.
"""

import http.client
import json
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from config import TestConfig
from tests.faults import (
    DATABASE_URL,
    assert_audit_passes,
    assert_every_accepted_hold_is_stored,
    hold,
    orders,
)
from tests.live_server import LiveServer, wait_until

CLIENTS, MOST_REQUESTS = 12, 5000
RELOADED = "HUP signal received"
RECYCLED = "RSS over threshold, gracefully respawning"


def replay_until_answered(url, i, deadline_s=30):
    """The answer to buyer i's request sent again with its Idempotency-Key, retried while cut."""
    deadline = time.monotonic() + deadline_s
    while True:
        answer = hold(url, "drop", f"b{i}@x.io", **{"Idempotency-Key": f"key-{i}"})
        if answer.status != 0 or time.monotonic() > deadline:
            return answer


def worker_pids(master):
    found = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True)
    return set(found.stdout.split())


def test_reloads_and_recycled_workers_mid_burst_lose_no_accepted_hold(app, make_product, tmp_path):
    make_product(slug="drop", total_stock=MOST_REQUESTS, max_per_customer=1)
    log = tmp_path / "web.log"
    # Every worker is over 1 MiB, so each RSS sample (every second) recycles it: the burst runs
    # through one graceful reload and at least two recycles, each a new worker started before the old
    # one stops.
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=2, threads=8, log=log,
                    WEB_MAX_RSS=1, WEB_RSS_SAMPLE_SECONDS=1, WEB_RESPAWN_SECONDS=1) as server:
        first_pids = worker_pids(server.web)
        answers, stop, lock = {}, threading.Event(), threading.Lock()
        numbers = iter(range(MOST_REQUESTS))

        def buyer():
            while not stop.is_set():
                with lock:
                    i = next(numbers, None)
                if i is None:
                    return
                answers[i] = hold(server.url, "drop", f"b{i}@x.io", **{"Idempotency-Key": f"key-{i}"})

        def seen(text):
            return log.read_text(errors="replace").count(text)

        with ThreadPoolExecutor(CLIENTS) as pool:
            for _ in range(CLIENTS):
                pool.submit(buyer)
            wait_until(lambda: len(answers) >= 50, 60, message="50 answers")
            server.web.send_signal(signal.SIGHUP)
            wait_until(lambda: seen(RELOADED), 60, message="the reload to begin")
            # The master handles one thing at a time: recycles logged after the reload began mean the
            # reload has replaced both workers, and then the new workers were recycled in turn.
            reloaded_at = seen(RECYCLED)
            wait_until(lambda: seen(RECYCLED) >= reloaded_at + 2, 60, message="two recycles")
            stop.set()

        broken = [i for i, answer in answers.items() if answer.status == 0]
        # A worker that outlives WEB_KILL_TIMEOUT is killed, perhaps mid-batch: the buyers that batch
        # held settle with the database, and one whose hold was not committed gets a 503 (unchanged).
        refused = [i for i, answer in answers.items() if answer.status == 503]
        # Workers keep recycling every second (WEB_MAX_RSS stays at 1 MiB), so a replay can be cut
        # too: like any client, retry a cut request with the same key until it gets an answer.
        replays = {i: replay_until_answered(server.url, i) for i in broken + refused}
        assert not worker_pids(server.web) & first_pids, "the workers were not replaced"

    statuses = [answer.status for answer in answers.values()]
    assert set(statuses) <= {0, 201, 503}, sorted(set(statuses))
    assert all(replays[i].status in (200, 201) for i in broken)
    assert all(replays[i].status == 201 for i in refused), "a 503 changed something"  # made only now
    accepted, stored = assert_every_accepted_hold_is_stored(app, list(answers.values()))
    resolved = {replay.body["id"] for replay in replays.values()}
    assert stored == accepted | resolved and len(stored) == len(answers)
    print(f"\n{len(answers)} holds through a reload and {seen(RECYCLED)} worker recycles; {len(broken)} broken "
          f"connections and {len(refused)} 503s, all resolved by replaying their Idempotency-Key")
    assert len(orders(app)) == len(answers)
    assert_audit_passes(app)


def test_sigterm_lets_requests_in_flight_finish(app, make_product):
    """SIGTERM to the server while buyers wait in the product's line: every one of them is answered."""
    make_product(slug="drop", total_stock=100, max_per_customer=1)
    buyers = 10
    # Each batch of holds sleeps a second inside the product lock, so the buyers behind the first
    # batch are still waiting for their answer when the signal arrives; they wait as long as it takes.
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=buyers,
                    FAULT_DELAY_IN_LOCK_MS=1000, LOCK_WAIT_MS=20_000) as server:
        # One hold first, so the process knows the sale: the buyers then go straight into the line. (Cold,
        # each would read the product first; on SQLite those reads queue behind the sleeping batches for
        # SQLite's writer lock, one per batch, and the last could outwait its busy timeout.)
        warm = hold(server.url, "drop", "warm@x.io")
        assert warm.status == 201
        sent, answers = threading.Semaphore(0), {}

        def buy(i):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                conn.request("POST", "/api/products/drop/holds", json.dumps({"email": f"b{i}@x.io"}),
                             {"Content-Type": "application/json"})
                sent.release()
                response = conn.getresponse()
                answers[i] = (response.status, json.loads(response.read()))
            except OSError as error:
                sent.release()
                answers[i] = (0, {"error": repr(error)})
            finally:
                conn.close()

        with ThreadPoolExecutor(buyers) as pool:
            for i in range(buyers):
                pool.submit(buy, i)
            for _ in range(buyers):
                assert sent.acquire(timeout=30)
            # Watched from here, not in the database: on SQLite a read would wait for the next batch.
            wait_until(lambda: answers, 30, message="the first batch's answers")
            assert len(answers) < buyers, "every buyer was answered before the signal: nothing to drain"
            server.web.send_signal(signal.SIGTERM)
        assert server.web.wait(timeout=30) == 0
        assert not server.healthy()

    assert sorted(status for status, _ in answers.values()) == [201] * buyers, answers
    assert set(orders(app)) == {body["id"] for _, body in answers.values()} | {warm.body["id"]}
    assert_audit_passes(app)
