"""Issue 20's "Done when", against localstripe through the production web tier (webserver.py) and a
real `flask worker`: cards that pay, a decline then another card, 3-D Secure, a decline never replaced
and an abandoned 3-D Secure, captures counted at the gateway, webhooks forged, unsigned, stale and
replayed, and `flask audit`.
"""

import subprocess
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from config import TestConfig
from flashsale import keys
from flashsale.extensions import db
from flashsale.models import InventoryEvent, Order
from tests.faults import DATABASE_URL, call, orders
from tests.live_server import BIN, ROOT, LiveServer, wait_until
from tests.stripe_local import event_payload, raw_post, sign

ACTION_SECONDS = 6


@pytest.fixture(scope="module")
def server(app, localstripe_server):
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=2, threads=8, with_worker=True,
                    HOLD_SECONDS=60, SWEEP_SECONDS=1, PAYMENT_TIMEOUT_SECONDS=2,
                    **localstripe_server.settings(PAYMENT_ACTION_SECONDS=ACTION_SECONDS)) as live:
        yield live


@pytest.fixture
def stripe(localstripe, server):
    localstripe.send_webhooks_to(f"{server.url}/webhooks/stripe")
    return localstripe


def place(server, slug, email, quantity=1):
    answer = call(f"{server.url}/api/products/{slug}/holds", "POST", {"email": email, "quantity": quantity})
    assert answer.status == 201, answer.body
    return answer.body["id"]


def confirm(server, hold_id, payment_method=None):
    body = {"payment_method": payment_method} if payment_method else None
    return call(f"{server.url}/api/holds/{hold_id}/confirm", "POST", body)


def statuses(app, hold_ids):
    found = orders(app)
    return {hold_id: found[hold_id].status for hold_id in hold_ids}


def captured(stripe):
    return [intent for intent in stripe.intents() if intent["status"] == "succeeded"]


def flask_audit(server):
    return subprocess.run([str(BIN / "flask"), "--app", "app", "audit"], cwd=ROOT, env=server.env,
                          capture_output=True, text=True, timeout=60)


def test_cards_that_pay_end_confirmed_with_one_capture_of_the_right_amount_and_currency(
        app, server, stripe, make_product):
    make_product(slug="gear", total_stock=10, max_per_customer=3, price_cents=1999)
    make_product(slug="velo", total_stock=10, max_per_customer=2, price_cents=120000, currency="eur")
    buyers = [("gear", "a@x.io", 3, "pm_card_visa"), ("gear", "b@x.io", 1, stripe.card("4242424242424242")),
              ("velo", "c@x.io", 2, stripe.card("5555555555554444")), ("velo", "d@x.io", 1, "pm_card_visa")]
    owed = {}
    for slug, email, quantity, card in buyers:
        hold_id = place(server, slug, email, quantity)
        answer = confirm(server, hold_id, card)
        # The worker may capture before the 202 is written (it did in 52 ms once): both are true answers.
        assert answer.status == 202 and answer.body["payment"]["status"] in ("processing", "captured"), answer.body
        owed[hold_id] = (answer.body["payment"]["reference"], quantity * (1999 if slug == "gear" else 120000),
                         "usd" if slug == "gear" else "eur")
    wait_until(lambda: set(statuses(app, owed).values()) == {"CONFIRMED"}, 30, message="every card captured")
    taken = {intent["metadata"]["hold_id"]: (intent["id"], intent["amount"], intent["currency"])
             for intent in captured(stripe)}
    assert taken == owed  # one capture per hold, of its amount, in its product's currency
    for hold_id, (reference, _, _) in owed.items():
        answer = call(f"{server.url}/api/holds/{hold_id}").body
        assert answer["payment"] == {"status": "captured", "reference": reference, "client_secret": None,
                                     "action_deadline": answer["payment"]["action_deadline"], "error": None}
    audited = flask_audit(server)
    assert audited.returncode == 0, audited.stderr


def test_declines_and_3d_secure_end_as_the_shopper_left_them(app, server, stripe, make_product):
    """A decline then another card, and completed 3-D Secure: CONFIRMED. A decline never replaced, and
    3-D Secure abandoned: RELEASED once PAYMENT_ACTION_SECONDS have passed, units back, nothing taken."""
    make_product(slug="drop", total_stock=4, price_cents=4999)
    retried, secured, declined, abandoned = (place(server, "drop", f"{who}@x.io")
                                             for who in ("retried", "secured", "declined", "abandoned"))
    for hold_id in (retried, declined):
        answer = confirm(server, hold_id, "pm_card_chargeCustomerFail")
        assert answer.status == 202 and answer.body["payment"]["status"] == "requires_payment_method"
        assert "declined" in answer.body["payment"]["error"]
    three_ds = stripe.card("4000002500003155")
    for hold_id in (secured, abandoned):
        assert confirm(server, hold_id, three_ds).body["payment"]["status"] == "requires_action"
    assert call(f"{server.url}/api/products/drop").body["available"] == 0

    assert confirm(server, retried, "pm_card_visa").status == 200  # another card
    action = call(f"{server.url}/api/holds/{secured}").body["payment"]
    stripe.authenticate(action["reference"], action["client_secret"])  # Stripe.js's dialog, completed
    assert confirm(server, secured).status == 200  # the page's nudge once the dialog closes
    wait_until(lambda: statuses(app, [retried, secured]) == {retried: "CONFIRMED", secured: "CONFIRMED"}, 30,
               message="the second card and the 3-D Secure payment captured")

    gone = {declined: "RELEASED", abandoned: "RELEASED"}
    wait_until(lambda: statuses(app, gone) == gone, ACTION_SECONDS + 20, message="both released at the deadline")
    with app.app_context():
        for hold_id in gone:
            accepted = db.session.get(Order, hold_id).confirmation_requested_at
            released = db.session.execute(select(InventoryEvent.created_at).where(
                InventoryEvent.order_id == hold_id, InventoryEvent.type == "RELEASED")).scalar_one()
            assert released >= accepted + timedelta(seconds=ACTION_SECONDS)  # not a moment before
        db.session.remove()
    assert call(f"{server.url}/api/products/drop").body["available"] == 2  # their units back
    for hold_id in gone:
        payment = call(f"{server.url}/api/holds/{hold_id}").body["payment"]
        assert payment["status"] == "canceled" and stripe.intent(payment["reference"])["status"] == "canceled"
    assert sorted(i["metadata"]["hold_id"] for i in captured(stripe)) == sorted([retried, secured])
    confirmed = [h for h, s in orders(app).items() if s.status == "CONFIRMED"]
    assert len(captured(stripe)) == len(confirmed) == 2  # captures at the gateway = CONFIRMED holds
    audited = flask_audit(server)
    assert audited.returncode == 0, audited.stderr


def test_forged_unsigned_stale_and_replayed_webhooks_change_nothing(app, server, stripe, make_product):
    from flashsale.extensions import redis_store

    make_product(slug="hook", total_stock=2, price_cents=1000)
    paid, waiting = place(server, "hook", "paid@x.io"), place(server, "hook", "waiting@x.io")
    confirm(server, paid, "pm_card_visa")
    pending = confirm(server, waiting, stripe.card("4000002500003155")).body["payment"]
    wait_until(lambda: statuses(app, [paid])[paid] == "CONFIRMED", 30, message="the capture")
    # localstripe signs and sends payment_intent.succeeded at the capture: it is handled once.
    delivered = wait_until(lambda: [e for e in stripe.events() if e["type"] == "payment_intent.succeeded"], 10,
                           message="localstripe's webhook")[0]
    with app.app_context():
        wait_until(lambda: redis_store.client.exists(keys.stripe_event(delivered["id"])), 10,
                   message="the delivered event recorded as handled")

    lie = {"id": "evt_forged", "type": "payment_intent.succeeded", "created": int(time.time()), "object": "event",
           "data": {"object": {**stripe.intent(pending["reference"]), "status": "succeeded"}}}
    payload = event_payload(lie)
    for signature in (None, sign(payload, secret="whsec_someone_else"), sign(payload, at=time.time() - 900)):
        answer = raw_post(f"{server.url}/webhooks/stripe", payload,
                          {"Stripe-Signature": signature} if signature else {})
        assert answer.status == 400, answer.body
    replay = raw_post(f"{server.url}/webhooks/stripe", event_payload(delivered),
                      {"Stripe-Signature": sign(event_payload(delivered), at=delivered["created"])})
    assert replay.status == 200 and replay.body == {"received": True, "duplicate": True}
    assert statuses(app, [paid, waiting]) == {paid: "CONFIRMED", waiting: "CONFIRMING"}
    assert stripe.intent(pending["reference"])["status"] == "requires_action"
    assert len(captured(stripe)) == 1
