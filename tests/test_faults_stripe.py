"""Faults a local Stripe cannot stage, staged around the real client (STRIPE_FAULT, flashsale/gateways/stripe_faults.py)
with the production web server and real workers: a worker SIGKILLed between authorise and capture, answers
lost after the call did its work (a capture, an intent's creation), and webhooks out of order.

Afterwards every hold has one outcome, no hold has two captured intents, and `flask audit` passes.
"""

import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import redis as redis_lib
from sqlalchemy import select

from config import TestConfig
from flashsale import keys
from flashsale.extensions import db
from flashsale.models import Payment
from tests.faults import DATABASE_URL, call, orders
from tests.live_server import BIN, ROOT, LiveServer, stop_process, wait_until
from tests.stripe_local import event_payload, raw_post, sign


def place(server, slug, email):
    answer = call(f"{server.url}/api/products/{slug}/holds", "POST", {"email": email})
    assert answer.status == 201, answer.body
    return answer.body["id"]


def confirm(server, hold_id, payment_method=None):
    return call(f"{server.url}/api/holds/{hold_id}/confirm", "POST",
                {"payment_method": payment_method} if payment_method else None)


def statuses(app, hold_ids):
    found = orders(app)
    return {hold_id: found[hold_id].status for hold_id in hold_ids}


def intents_by_hold(stripe):
    found = {}
    for intent in stripe.intents():
        found.setdefault(intent["metadata"].get("hold_id"), []).append(intent)
    return found


def assert_one_capture_each(stripe, hold_ids):
    by_hold = intents_by_hold(stripe)
    for hold_id in hold_ids:
        taken = [i for i in by_hold.get(hold_id, []) if i["status"] == "succeeded"]
        assert len(taken) == 1, (hold_id, [(i["id"], i["status"]) for i in by_hold.get(hold_id, [])])


def assert_audit_passes(server):
    audited = subprocess.run([str(BIN / "flask"), "--app", "app", "audit"], cwd=ROOT, env=server.env,
                             capture_output=True, text=True, timeout=60)
    assert audited.returncode == 0, audited.stderr


def test_a_worker_killed_between_authorise_and_capture_is_reconciled_and_captures_once(
        app, make_product, localstripe):
    make_product(slug="kill", total_stock=12, price_cents=3000)
    settings = localstripe.settings(STRIPE_FAULT="capture=slow:60")
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=8, with_worker=True, HOLD_SECONDS=60,
                    SWEEP_SECONDS=1, PAYMENT_TIMEOUT_SECONDS=2, **settings) as server:
        ids = [place(server, "kill", f"k{i}@x.io") for i in range(12)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda h: confirm(server, h, "pm_card_visa"), ids))
        assert {a.status for a in answers} == {202}
        assert {a.body["payment"]["status"] for a in answers} == {"processing"}  # authorised in the request

        def every_capture_under_way():
            with app.app_context():
                rows = db.session.execute(select(Payment.attempts).where(Payment.order_id.in_(ids))).scalars().all()
                db.session.remove()
            return len(rows) == len(ids) and all(rows)

        # Every hold authorised at Stripe, and the worker inside every capture call (slowed down).
        wait_until(every_capture_under_way, 20, message="the worker to start every capture")
        stop_process(server.worker, signal.SIGKILL)
        by_hold = intents_by_hold(localstripe)
        assert {by_hold[h][0]["status"] for h in ids} == {"requires_capture"}  # authorised, not captured
        assert set(statuses(app, ids).values()) == {"CONFIRMING"}

        server.env.pop("STRIPE_FAULT")
        server.start_worker()
        wait_until(lambda: set(statuses(app, ids).values()) == {"CONFIRMED"}, 40,
                   message="reconciliation to capture every authorised intent")
        assert_one_capture_each(localstripe, ids)
        assert_audit_passes(server)


def test_answers_lost_after_the_call_did_its_work_charge_nobody_twice(app, make_product, localstripe):
    """create and capture each lose their first answer per process; the library retries with the same
    idempotency key, which localstripe ignores: a second intent is made (never given a card), and the
    second capture is refused (already captured) and settled by reading the intent."""
    make_product(slug="lossy", total_stock=6, price_cents=1500)
    settings = localstripe.settings(STRIPE_FAULT="create=lost,capture=lost", STRIPE_MAX_NETWORK_RETRIES=1)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=2, threads=8, with_worker=True, HOLD_SECONDS=60,
                    SWEEP_SECONDS=1, PAYMENT_TIMEOUT_SECONDS=2, **settings) as server:
        ids = [place(server, "lossy", f"l{i}@x.io") for i in range(6)]
        for hold_id in ids:
            assert confirm(server, hold_id, "pm_card_visa").status == 202
        wait_until(lambda: set(statuses(app, ids).values()) == {"CONFIRMED"}, 40, message="every payment")
        by_hold = intents_by_hold(localstripe)
        assert sum(len(by_hold[h]) for h in ids) > len(ids)  # duplicates were made: keys not honoured
        assert_one_capture_each(localstripe, ids)
        assert_audit_passes(server)


def test_webhooks_out_of_order_or_twice_change_nothing(app, make_product, localstripe):
    make_product(slug="late", total_stock=2, price_cents=700)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=8, with_worker=True, HOLD_SECONDS=60,
                    SWEEP_SECONDS=1, **localstripe.settings()) as server:
        localstripe.send_webhooks_to(f"{server.url}/webhooks/stripe")
        hold_id = place(server, "late", "late@x.io")
        declined = confirm(server, hold_id, "pm_card_chargeCustomerFail").body["payment"]["reference"]
        assert confirm(server, hold_id, "pm_card_visa").status == 200
        wait_until(lambda: statuses(app, [hold_id])[hold_id] == "CONFIRMED", 30, message="the capture")
        events = wait_until(lambda: len(localstripe.events()) >= 2 and localstripe.events(), 10,
                            message="localstripe's two webhooks (the decline, the capture)")
        handled = redis_lib.Redis.from_url(TestConfig.REDIS_URL)
        wait_until(lambda: all(handled.exists(keys.stripe_event(e["id"])) for e in events), 10,
                   message="both delivered and handled")
        # The decline's event again, now, after the capture (out of order), then each event twice.
        failed = [e for e in events if e["type"] == "payment_intent.payment_failed"][0]
        assert failed["data"]["object"]["id"] == declined
        late = {**failed, "id": "evt_late_copy", "created": int(time.time())}
        answer = raw_post(f"{server.url}/webhooks/stripe", event_payload(late),
                          {"Stripe-Signature": sign(event_payload(late))})
        assert answer.status == 200, answer.body
        for event in events:
            again = raw_post(f"{server.url}/webhooks/stripe", event_payload(event),
                             {"Stripe-Signature": sign(event_payload(event))})
            assert again.status == 200 and again.body.get("duplicate"), again.body
        assert statuses(app, [hold_id])[hold_id] == "CONFIRMED"
        assert_one_capture_each(localstripe, [hold_id])
        assert_audit_passes(server)
