"""Faults in the money path, staged for real: the worker SIGKILLed at each point of a charge, a gateway
that times out, one that takes the money and loses the answer, one that never answers, one that refuses.

After a restart and reconciliation: every hold has one outcome, nobody is charged twice or charged for a
hold that did not end CONFIRMED, and `flask audit` (with the gateway's own charges) passes. The fake
gateway keeps its charges in its own table, outside the worker, as a real provider keeps them on its servers,
and spends half its delay before a charge is recorded and half after, so a kill can land on either side.
"""

import signal
from concurrent.futures import ThreadPoolExecutor

from config import TestConfig
from tests.faults import (
    DATABASE_URL,
    assert_audit_passes,
    burst,
    call,
    gateway_record,
    payments_of,
)
from tests.live_server import LiveServer, stop_process, wait_until


def confirm(server, hold_id):
    answer = call(f"{server.url}/api/holds/{hold_id}/confirm", "POST")
    return answer.status


def test_a_worker_killed_before_the_gateway_call_or_after_the_capture_is_reconciled_once(
        app, make_product, shop):
    """(a) a Payment recorded and its attempt started, the gateway not reached yet; (b) the gateway
    captured, CONFIRMED not yet committed. One SIGKILL lands on both at once."""
    make_product(slug="kill", total_stock=10)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=8, with_worker=True,
                    HOLD_SECONDS=60, SWEEP_SECONDS=1, PAYMENT_TIMEOUT_SECONDS=2,
                    FAKE_PAYMENT_DELAY_MS=3000) as server:
        captured_first, not_reached = (a.body["id"] for a in burst(server.url, "kill", ["b@x.io", "a@x.io"]))
        assert confirm(server, captured_first) == 202
        wait_until(lambda: payments_of(app)[captured_first][1] == 1, 10, interval=0.01,
                   message="the first charge to set out")
        assert confirm(server, not_reached) == 202

        def both_windows_open():
            return (gateway_record(app, captured_first).get("status") == "captured"
                    and payments_of(app).get(not_reached, (None, 0))[1] == 1
                    and "status" not in gateway_record(app, not_reached))

        # The first charge is captured and its answer still on the wire (1.5 s); the second has set
        # out and not reached the gateway (1.5 s): kill the worker inside both windows.
        wait_until(both_windows_open, 10, interval=0.005, message="both kill windows open")
        stop_process(server.worker, signal.SIGKILL)
        assert shop.statuses([captured_first, not_reached]) == {captured_first: "CONFIRMING",
                                                                not_reached: "CONFIRMING"}
        assert gateway_record(app, captured_first)["status"] == "captured"
        assert "status" not in gateway_record(app, not_reached)

        server.env["FAKE_PAYMENT_DELAY_MS"] = "100"
        server.start_worker()
        wait_until(lambda: set(shop.statuses([captured_first, not_reached]).values()) == {"CONFIRMED"},
                   30, message="reconciliation to settle both")
    # The capture was found, not taken again (one call ever reached the gateway for it); the charge
    # that never arrived was made once, with the same key.
    assert gateway_record(app, captured_first)["calls"] == 1
    assert gateway_record(app, not_reached)["status"] == "captured"
    assert payments_of(app) == {captured_first: ("captured", 2), not_reached: ("captured", 2)}
    for hold_id in (captured_first, not_reached):
        assert shop.events(hold_id) == ["HOLD_CREATED", "CONFIRMING", "CONFIRMED"]
    assert_audit_passes(app)


def test_a_worker_killed_with_many_charges_in_flight_loses_none_and_charges_none_twice(
        app, make_product, shop):
    """(c) 60 confirmations at once, the worker killed while many charges are in flight."""
    make_product(slug="many", total_stock=60)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=2, threads=16, with_worker=True,
                    HOLD_SECONDS=60, SWEEP_SECONDS=1, PAYMENT_TIMEOUT_SECONDS=2,
                    FAKE_PAYMENT_DELAY_MS=1500) as server:
        ids = [a.body["id"] for a in burst(server.url, "many", [f"m{i}@x.io" for i in range(60)])]
        with ThreadPoolExecutor(30) as pool:
            assert set(pool.map(lambda h: confirm(server, h), ids)) == {202}

        def in_flight():
            rows = payments_of(app)
            flying = [h for h, (state, attempts) in rows.items() if state == "started" and attempts]
            answered_late = [h for h in flying if gateway_record(app, h).get("status") == "captured"]
            return len(flying) >= 20 and answered_late

        # Many charges on their way, some of them already captured and not yet answered.
        wait_until(in_flight, 20, interval=0.01, message="20 charges in flight, some captured")
        stop_process(server.worker, signal.SIGKILL)
        rows = payments_of(app)
        flying = sum(1 for state, attempts in rows.values() if state == "started" and attempts)
        taken = sum(1 for h in ids if gateway_record(app, h).get("status") == "captured")
        server.env["FAKE_PAYMENT_DELAY_MS"] = "100"
        server.start_worker()
        wait_until(lambda: set(shop.statuses(ids).values()) == {"CONFIRMED"}, 60,
                   message="every accepted confirmation kept")
    print(f"\nkilled with {flying} charges in flight ({taken} already captured at the gateway)")
    assert flying >= 20 and taken >= 1
    for hold_id in ids:
        record = gateway_record(app, hold_id)
        assert record["status"] == "captured"
    assert_audit_passes(app)  # includes: no hold charged twice, every capture a CONFIRMED hold


def test_timeouts_lost_answers_a_dead_gateway_and_refusals_each_end_right(app, make_product, shop):
    make_product(slug="gw", total_stock=4)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=8, with_worker=True,
                    HOLD_SECONDS=60, SWEEP_SECONDS=1, PAYMENT_TIMEOUT_SECONDS=1,
                    PAYMENT_FINAL_SECONDS=4, FAKE_PAYMENT_DELAY_MS=100) as server:
        emails = ["slow+timeout@x.io", "unlucky+lost@x.io", "gone+down@x.io", "broke+refuse@x.io"]
        timeout, lost, down, refused = (a.body["id"] for a in burst(server.url, "gw", emails))
        assert call(f"{server.url}/api/products/gw").body["available"] == 0
        for hold_id in (timeout, lost, down, refused):
            assert confirm(server, hold_id) == 202
        wait_until(lambda: shop.statuses([refused])[refused] == "RELEASED", 15, message="the refusal")
        # Its unit back at once, not at the hold's expiry: the stock snapshot in Redis moves right after the
        # release commits, so a read between the two may still see 0 for that instant.
        wait_until(lambda: call(f"{server.url}/api/products/gw").body["available"] == 1, 2,
                   message="the refused unit back on sale")
        wait_until(lambda: shop.statuses([timeout, lost]) == {timeout: "CONFIRMED", lost: "CONFIRMED"},
                   30, message="the timeout and the lost answer reconciled")
        wait_until(lambda: shop.statuses([down])[down] == "RELEASED", 30,
                   message="the dead gateway's payment given up at the final deadline")
        wait_until(lambda: call(f"{server.url}/api/products/gw").body["available"] == 2, 2,
                   message="the given-up unit back on sale")
    assert gateway_record(app, lost)["calls"] == 1  # found by reconciliation, never re-sent
    assert gateway_record(app, timeout)["calls"] == 2  # re-sent with the same key, charged once
    assert gateway_record(app, down)["status"] == "voided"  # a late charge can never land
    assert payments_of(app)[refused][0] == "refused" and payments_of(app)[down][0] == "voided"
    reasons = {hold_id: [meta.get("reason") for kind, meta in shop.ledger(hold_id) if kind == "RELEASED"]
               for hold_id in (refused, down)}
    assert reasons == {refused: ["payment_refused"], down: ["payment_unfinished"]}
    assert_audit_passes(app)
