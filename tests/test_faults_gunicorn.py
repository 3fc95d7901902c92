"""Fault: gunicorn recycles its workers during a burst, by --max-requests and by SIGHUP (a deploy's
graceful reload). No accepted hold is lost: every 201 a client got is in the database, and any request
whose connection broke is resolved by replaying its Idempotency-Key.
"""

import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from config import TestConfig
from tests.faults import (
    DATABASE_URL,
    assert_audit_passes,
    assert_every_accepted_hold_is_stored,
    hold,
    orders,
)
from tests.live_server import LiveServer, wait_until

pytestmark = pytest.mark.usefixtures("postgres_only")

REQUESTS, MAX_REQUESTS = 240, 25


def worker_pids(master):
    found = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True)
    return set(found.stdout.split())


def test_worker_restarts_mid_burst_lose_no_accepted_hold(app, make_product, tmp_path):
    make_product(slug="drop", total_stock=1000, max_per_customer=1)
    access_log = tmp_path / "access.log"
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL,
                    workers=2, threads=8, gunicorn_args=["--access-logformat", "%(p)s %(s)s"],
                    WEB_MAX_REQUESTS=MAX_REQUESTS, ACCESS_LOG=access_log) as server:
        first_pids = worker_pids(server.web)
        answers, done = {}, threading.Event()

        def buy(i):
            answers[i] = hold(server.url, "drop", f"b{i}@x.io", **{"Idempotency-Key": f"key-{i}"})

        def reload_twice():
            for after in (REQUESTS // 4, REQUESTS // 2):
                wait_until(lambda after=after: len(answers) >= after or done.is_set(), 60,
                           message=f"{after} answers")
                server.web.send_signal(signal.SIGHUP)

        reloader = threading.Thread(target=reload_twice)
        reloader.start()
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(buy, range(REQUESTS)))
        done.set()
        reloader.join()

        broken = [i for i, answer in answers.items() if answer.status == 0]
        replays = {i: hold(server.url, "drop", f"b{i}@x.io", **{"Idempotency-Key": f"key-{i}"})
                   for i in broken}
        served_by = {line.split()[0] for line in access_log.read_text().splitlines() if line.strip()}
        assert not worker_pids(server.web) & first_pids, "SIGHUP did not replace the workers"

    statuses = [answer.status for answer in answers.values()]
    assert set(statuses) <= {0, 201}, sorted(set(statuses))
    assert len(served_by) >= 2 * 3, "the workers were not recycled during the burst"
    assert all(replay.status in (200, 201) for replay in replays.values())
    accepted, stored = assert_every_accepted_hold_is_stored(app, list(answers.values()))
    resolved = {replay.body["id"] for replay in replays.values()}
    assert stored == accepted | resolved and len(stored) == REQUESTS
    print(f"\n{REQUESTS} holds through {len(served_by)} worker processes; {len(broken)} broken "
          f"connections, all resolved by replaying their Idempotency-Key")
    assert len(orders(app)) == REQUESTS
    assert_audit_passes(app)
