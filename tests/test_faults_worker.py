"""Fault: the RQ worker is SIGKILLed mid-charge, with confirmations queued and expiries due.

While it is dead, more shoppers confirm (one of them twice): each is accepted at once (202,
CONFIRMING) although no worker runs, and holds lapse (their expiry is moved into the past, as if the
clock ran on), including holds whose confirmation was accepted. On restart: every lapsed hold nobody
confirmed is recorded EXPIRED within SWEEP_SECONDS + 1 s of the worker coming up, every accepted
confirmation ends CONFIRMED however long it waited (the promise is kept), the one killed mid-charge
included, and nobody is charged twice.
"""

import signal
import time

import redis as redis_lib
from rq import Queue, Worker

from config import TestConfig
from tests.faults import (
    DATABASE_URL,
    assert_audit_passes,
    burst,
    call,
    gateway_record,
    orders,
    payments_of,
)
from tests.live_server import LiveServer, stop_process, wait_until

SWEEP_SECONDS = 1


def test_a_killed_worker_restarts_into_a_consistent_sale(app, shop, make_product):
    make_product(slug="drop", total_stock=50, max_per_customer=1)
    redis = redis_lib.Redis.from_url(TestConfig.REDIS_URL)
    queue = Queue(TestConfig.QUEUE_NAME, connection=redis)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=8, with_worker=True,
                    HOLD_SECONDS=60, SWEEP_SECONDS=SWEEP_SECONDS, FAKE_PAYMENT_DELAY_MS=600,
                    PAYMENT_TIMEOUT_SECONDS=2) as server:
        placed = burst(server.url, "drop", [f"b{i}@x.io" for i in range(14)], concurrency=7)
        ids = [a.body["id"] for a in placed]
        confirm_first, confirm_while_dead, never_confirmed, untouched = (
            ids[0:4], ids[4:8], ids[8:12], ids[12:14])

        def confirm(hold_id):
            answer = call(f"{server.url}/api/holds/{hold_id}/confirm", "POST")
            return answer.status, answer.body.get("status")

        assert [confirm(h) for h in confirm_first] == [(202, "CONFIRMING")] * 4
        # Kill the worker while some charge is on its way: recorded as attempted, not yet answered.
        wait_until(lambda: any(attempts and state == "started"
                               for state, attempts in payments_of(app).values()), 15,
                   interval=0.01, message="a charge in flight")
        stop_process(server.worker, signal.SIGKILL)
        in_flight = {h for h, (state, attempts) in payments_of(app).items() if state == "started"}
        old_workers = {w.name for w in Worker.all(queue=queue)}

        assert [confirm(h) for h in confirm_while_dead] == [(202, "CONFIRMING")] * 4  # no worker needed
        assert confirm(confirm_while_dead[0]) == (200, "CONFIRMING")  # a second click: the same promise
        # Time runs on while the worker is dead: every hold's two minutes run out.
        assert set(shop.statuses(never_confirmed).values()) == {"PENDING"}
        shop.lapse(*ids[:12])

        restarted_at = time.monotonic()
        server.start_worker()
        wait_until(lambda: {w.name for w in Worker.all(queue=queue)} - old_workers, 30,
                   message="the new worker to register")
        ready_at = time.monotonic()
        wait_until(lambda: set(shop.statuses(never_confirmed).values()) == {"EXPIRED"}, 30,
                   interval=0.02, message="every lapsed, unconfirmed hold recorded EXPIRED")
        recorded_in = time.monotonic() - ready_at
        assert recorded_in <= SWEEP_SECONDS + 1

        accepted = set(confirm_first) | set(confirm_while_dead)
        wait_until(lambda: set(shop.statuses(accepted).values()) == {"CONFIRMED"}, 30,
                   message="every accepted confirmation kept, the one killed mid-charge included")
        print(f"\nworker up {ready_at - restarted_at:.2f} s after restart; {len(never_confirmed)} lapsed "
              f"holds recorded {recorded_in:.2f} s later; {len(in_flight)} charge(s) killed in flight")

    final = orders(app)
    for hold_id in never_confirmed:
        assert final[hold_id].status == "EXPIRED"
        assert shop.events(hold_id) == ["HOLD_CREATED", "EXPIRED"]
    for hold_id in accepted:
        assert final[hold_id].confirmation_requested_at < final[hold_id].hold_expires_at
        assert shop.events(hold_id) == ["HOLD_CREATED", "CONFIRMING", "CONFIRMED"]
        assert gateway_record(app, hold_id)["status"] == "captured"  # one key, one charge
    for hold_id in never_confirmed + untouched:
        assert gateway_record(app, hold_id) == {}  # nothing taken for a hold nobody confirmed
    assert {final[h].status for h in untouched} == {"PENDING"}
    assert_audit_passes(app)
