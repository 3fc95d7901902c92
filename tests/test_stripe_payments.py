"""Paying by PaymentIntent against a local Stripe (localstripe), step by step, in this process.

The API is called through Flask's test client on an app configured for Stripe; what the worker does
is called as the worker calls it (flashsale.jobs). The same purchases through the production web
server and a real worker, and the faults that need processes, are in tests/test_stripe_live.py and
tests/test_faults_stripe.py.
"""

import json
import time
from datetime import timedelta

import pytest
import stripe
from sqlalchemy import select, update

from config import TestConfig
from flashsale import create_app
from flashsale.extensions import db, redis_store
from flashsale.gateways.stripe import StripeGateway, gateway_from_config
from flashsale.gateways.stripe_faults import FaultyRequestsClient
from flashsale.gateways.stripe_settings import SettingsMissing
from flashsale.inventory import intents
from flashsale.inventory.audit import audit
from flashsale.inventory.clock import db_now
from flashsale.inventory.stock import stock_levels
from flashsale.models import Order, Payment
from flashsale.worker import jobs
from tests.stripe_local import PUBLISHABLE_KEY, SECRET_KEY, WEBHOOK_SECRET, event_payload, sign

NOW_DUE = intents.PaymentPolicy(timeout_seconds=0, action_seconds=300)


def run_out_of_time():
    """Move every payment's action deadline a second into the past (accepted ten seconds ago)."""
    now = db_now(db.session)  # a value, not SQL: SQLite has no interval arithmetic
    db.session.execute(update(Payment).values(created_at=now - timedelta(seconds=10),
                                              action_deadline=now - timedelta(seconds=1)))
    db.session.commit()


@pytest.fixture(scope="module")
def stripe_app(app, localstripe_server):
    """The app on the test database and Redis, taking payments through the session's localstripe."""
    settings = localstripe_server.settings(STRIPE_MAX_NETWORK_RETRIES=0, STRIPE_TIMEOUT_SECONDS=5)
    settings["STRIPE_MAX_NETWORK_RETRIES"] = 0
    settings["STRIPE_TIMEOUT_SECONDS"] = 5.0
    return create_app(TestConfig, **settings)


@pytest.fixture
def shop(stripe_app, localstripe):
    with stripe_app.app_context():
        yield stripe_app
        db.session.remove()


def hold(client, slug="ps5", email="ann@example.com", quantity=1):
    answer = client.post(f"/api/products/{slug}/holds", json={"email": email, "quantity": quantity})
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def confirm(client, hold_id, payment_method=None):
    body = {"payment_method": payment_method} if payment_method else None
    return client.post(f"/api/holds/{hold_id}/confirm", json=body) if body else \
        client.post(f"/api/holds/{hold_id}/confirm")


def payment_row(hold_id):
    db.session.expire_all()
    row = db.session.execute(select(Payment).where(Payment.order_id == hold_id)).scalar_one()
    db.session.rollback()
    return row


def status_of(hold_id):
    db.session.expire_all()
    found = db.session.get(Order, hold_id).status
    db.session.rollback()
    return found


def breaches(shop):
    return [str(b) for b in audit(db.session, gateway_from_config(shop.config), 900)]


def succeeded(localstripe, hold_id):
    return [i for i in localstripe.intents() if i["metadata"].get("hold_id") == hold_id and i["status"] == "succeeded"]


# --- the shopper's part and the worker's -------------------------------------------------------------

def test_a_card_given_with_the_confirm_is_authorised_then_captured_by_the_worker(shop, localstripe, make_product):
    make_product(max_per_customer=2, price_cents=1250, currency="eur")
    client = shop.test_client()
    hold_id = hold(client, quantity=2)
    answer = confirm(client, hold_id, "pm_card_visa")
    assert answer.status_code == 202 and answer.json["status"] == "CONFIRMING"
    payment = answer.json["payment"]
    assert payment["status"] == "processing" and payment["reference"].startswith("pi_")
    assert payment["client_secret"] is None and payment["action_deadline"]
    intent = localstripe.intent(payment["reference"])
    assert (intent["status"], intent["amount"], intent["currency"]) == ("requires_capture", 2500, "eur")
    assert intent["capture_method"] == "manual" and intent["metadata"] == {"hold_id": hold_id}
    assert jobs.pay(hold_id).outcome == "confirmed"  # the worker captures
    assert localstripe.intent(payment["reference"])["status"] == "succeeded"
    done = client.get(f"/api/holds/{hold_id}").json
    assert done["status"] == "CONFIRMED" and done["payment"]["status"] == "captured"
    assert done["payment"]["reference"] == payment["reference"]
    assert jobs.pay(hold_id).outcome == "skipped"  # the job ran twice: nothing more
    assert breaches(shop) == []


def test_a_confirm_without_a_card_hands_the_client_secret_to_the_shopper(shop, localstripe, make_product):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    answer = confirm(client, hold_id)
    payment = answer.json["payment"]
    assert answer.status_code == 202 and payment["status"] == "requires_payment_method"
    intent = localstripe.intent(payment["reference"])
    assert payment["client_secret"] == intent["client_secret"]
    assert payment_row(hold_id).intent_id == intent["id"]  # recorded before any card can go on it
    accepted = client.get(f"/api/holds/{hold_id}").json
    assert accepted["payment"]["action_deadline"] > accepted["confirmation_requested_at"]
    # Waiting for the shopper: the worker changes nothing, and a second confirm makes no second intent.
    assert jobs.pay(hold_id).outcome == "waiting"
    assert confirm(client, hold_id).status_code == 200
    assert len(localstripe.intents()) == 1 and status_of(hold_id) == "CONFIRMING"


def test_a_card_authorised_just_after_the_reconciler_read_the_intent_is_captured_at_once(
        shop, localstripe, make_product):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    confirm(client, hold_id)  # no card yet: the shopper is typing it
    redis, gateway = redis_store.client, gateway_from_config(shop.config)
    assert intents.reconcile_payment(db.session, redis, hold_id, gateway, NOW_DUE).outcome == "waiting"
    assert confirm(client, hold_id, "pm_card_visa").json["payment"]["status"] == "processing"
    assert jobs.pay(hold_id).outcome == "confirmed"  # the reconciler's recent attempt holds nothing up


def test_a_declined_card_leaves_the_hold_confirming_and_another_card_pays(shop, localstripe, make_product):
    pid = make_product(total_stock=1)
    client = shop.test_client()
    hold_id = hold(client)
    declined = confirm(client, hold_id, "pm_card_chargeCustomerFail")
    assert declined.status_code == 202 and declined.json["status"] == "CONFIRMING"
    assert declined.json["payment"]["status"] == "requires_payment_method"
    assert "declined" in declined.json["payment"]["error"] and declined.json["payment"]["client_secret"]
    first = declined.json["payment"]["reference"]
    assert stock_levels(db.session)[pid].available == 0  # the unit stays the shopper's
    paid = confirm(client, hold_id, "pm_card_visa")
    assert paid.status_code == 200 and paid.json["payment"]["status"] == "processing"
    second = paid.json["payment"]["reference"]
    # The declined intent cannot take another card (not at localstripe): it was canceled and replaced.
    assert second != first and localstripe.intent(first)["status"] == "canceled"
    assert payment_row(hold_id).replaced_intents == [first]
    assert jobs.pay(hold_id).outcome == "confirmed"
    assert [i["id"] for i in succeeded(localstripe, hold_id)] == [second]
    assert breaches(shop) == []


def test_3d_secure_completed_by_the_shopper_confirms_after_the_nudge(shop, localstripe, make_product):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    asked = confirm(client, hold_id, localstripe.card("4000002500003155")).json["payment"]
    assert asked["status"] == "requires_action" and asked["client_secret"]
    assert localstripe.authenticate(asked["reference"], asked["client_secret"])["status"] == "requires_capture"
    nudged = confirm(client, hold_id)  # what the page does once Stripe's dialog closes
    assert nudged.status_code == 200 and nudged.json["payment"]["status"] == "processing"
    assert jobs.pay(hold_id).outcome == "confirmed"
    assert status_of(hold_id) == "CONFIRMED" and len(succeeded(localstripe, hold_id)) == 1


def test_failed_3d_secure_lets_the_shopper_try_another_card(shop, localstripe, make_product):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    asked = confirm(client, hold_id, localstripe.card("4000002500003155")).json["payment"]
    localstripe.authenticate(asked["reference"], asked["client_secret"], success=False)
    failed = confirm(client, hold_id).json["payment"]
    assert failed["status"] == "requires_payment_method" and failed["error"]
    assert confirm(client, hold_id, localstripe.card("4242424242424242")).json["payment"]["status"] == "processing"
    assert jobs.pay(hold_id).outcome == "confirmed" and len(succeeded(localstripe, hold_id)) == 1


def test_past_the_deadline_an_unauthorised_intent_is_canceled_and_the_hold_released(shop, localstripe, make_product):
    pid = make_product(total_stock=1)
    client = shop.test_client()
    declined = hold(client)
    reference = confirm(client, declined, "pm_card_chargeCustomerFail").json["payment"]["reference"]
    run_out_of_time()
    jobs.reconcile_payments()  # the reconciler's period: due at once, the deadline having passed
    assert status_of(declined) == "RELEASED" and payment_row(declined).state == "voided"
    assert localstripe.intent(reference)["status"] == "canceled"
    assert stock_levels(db.session)[pid].available == 1
    answer = client.get(f"/api/holds/{declined}").json
    assert answer["payment"]["status"] == "canceled" and answer["payment"]["client_secret"] is None
    # A card sent after the deadline changes nothing.
    assert confirm(client, declined, "pm_card_visa").status_code == 409
    assert succeeded(localstripe, declined) == [] and breaches(shop) == []


def test_an_intent_authorised_just_before_the_deadline_is_captured_not_canceled(shop, localstripe, make_product):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    confirm(client, hold_id, "pm_card_visa")  # authorised; the worker has not captured yet
    run_out_of_time()
    assert intents.reconcile_payment(db.session, redis_store.client, hold_id, gateway_from_config(shop.config),
                                     NOW_DUE).outcome == "confirmed"
    assert len(succeeded(localstripe, hold_id)) == 1


# --- lost answers: correctness rests on the recorded intent id, not on idempotency keys -----------------

def faulty_gateway(localstripe, *faults, retries=0):
    http = FaultyRequestsClient(faults, timeout=(3, 5))
    client = stripe.StripeClient(SECRET_KEY, base_addresses={"api": localstripe.url}, max_network_retries=retries,
                                 http_client=http)
    return StripeGateway(client, PUBLISHABLE_KEY, WEBHOOK_SECRET)


def test_a_capture_whose_answer_was_lost_is_found_by_reading_the_intent(shop, localstripe, make_product):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    reference = confirm(client, hold_id, "pm_card_visa").json["payment"]["reference"]
    redis, lossy = redis_store.client, faulty_gateway(localstripe, ("capture", "lost"))
    assert intents.take_payment(db.session, redis, hold_id, lossy).outcome == "pending"
    assert localstripe.intent(reference)["status"] == "succeeded" and status_of(hold_id) == "CONFIRMING"
    # The lease holds off a second attempt; once it has run out the reconciler reads the intent.
    assert intents.reconcile_payment(db.session, redis, hold_id, lossy).outcome == "skipped"
    assert intents.reconcile_payment(db.session, redis, hold_id, lossy, NOW_DUE).outcome == "confirmed"
    assert breaches(shop) == []


def test_a_create_retried_after_a_lost_answer_makes_a_second_intent_that_never_gets_a_card(
        shop, localstripe, make_product):
    """The library retries with the same idempotency key; localstripe makes a second intent all the same."""
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    db.session.rollback()
    from flashsale.inventory.confirmation import accept_confirmation

    accept_confirmation(db.session, hold_id, action_seconds=300)
    gateway = faulty_gateway(localstripe, ("create", "lost"), retries=1)
    assert intents.advance(db.session, redis_store.client, hold_id, gateway, payment_method="pm_card_visa",
                           capture=False).outcome == "authorised"
    made = localstripe.intents()
    assert len(made) == 2  # two intents for one hold at the gateway: the key was not honoured
    recorded = payment_row(hold_id).intent_id
    orphan = [i for i in made if i["id"] != recorded][0]
    assert orphan["status"] == "requires_payment_method" and orphan["payment_method"] is None
    assert jobs.pay(hold_id).outcome == "confirmed" and len(succeeded(localstripe, hold_id)) == 1
    assert breaches(shop) == []


def test_a_card_that_could_not_reach_stripe_is_refused_with_503_and_changes_nothing(
        shop, localstripe, make_product, monkeypatch):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    first = confirm(client, hold_id).json["payment"]
    down = faulty_gateway(localstripe, ("update", "down"), ("confirm", "down"))
    monkeypatch.setattr("flashsale.checkout.gateway_from_config", lambda config, redis: down)
    refused = confirm(client, hold_id, "pm_card_visa")
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert localstripe.intent(first["reference"])["status"] == "requires_payment_method"
    assert status_of(hold_id) == "CONFIRMING"


# --- webhooks ---------------------------------------------------------------------------------------

def post_event(client, event, signature=None, payload=None):
    payload = payload or event_payload(event)
    headers = {"Content-Type": "application/json"}
    if signature is not False:
        headers["Stripe-Signature"] = signature or sign(payload)
    return client.post("/webhooks/stripe", data=payload, headers=headers)


def test_webhooks_forged_unsigned_or_stale_change_nothing_and_a_replay_is_handled_once(
        shop, localstripe, make_product):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    reference = confirm(client, hold_id, "pm_card_visa").json["payment"]["reference"]
    event = {"id": "evt_test_1", "type": "payment_intent.amount_capturable_updated", "created": int(time.time()),
             "object": "event", "data": {"object": localstripe.intent(reference)}}
    payload = event_payload(event)
    for bad in (False, sign(payload, secret="whsec_not_ours"), sign(payload, at=time.time() - 600),
                sign(payload + b" ")):
        refused = post_event(client, event, bad, payload)
        assert refused.status_code == 400, refused.data
    assert status_of(hold_id) == "CONFIRMING" and localstripe.intent(reference)["status"] == "requires_capture"
    handled = post_event(client, event)
    assert handled.status_code == 200 and handled.json["outcome"] == "confirmed"  # read, captured
    replay = post_event(client, event)
    assert replay.status_code == 200 and replay.json == {"received": True, "duplicate": True}
    assert len(succeeded(localstripe, hold_id)) == 1 and breaches(shop) == []


def test_a_webhook_is_never_trusted_for_what_happened(shop, localstripe, make_product):
    """A signed payment_intent.succeeded for an intent still waiting for 3-D Secure changes nothing."""
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    asked = confirm(client, hold_id, localstripe.card("4000002500003155")).json["payment"]
    claimed = {**localstripe.intent(asked["reference"]), "status": "succeeded"}
    event = {"id": "evt_lie", "type": "payment_intent.succeeded", "created": int(time.time()), "object": "event",
             "data": {"object": claimed}}
    answer = post_event(client, event)
    assert answer.status_code == 200 and answer.json["outcome"] == "waiting"
    assert status_of(hold_id) == "CONFIRMING" and payment_row(hold_id).intent_status == "requires_action"


# --- settings, audit, page ----------------------------------------------------------------------------

def test_the_app_refuses_to_start_without_a_stripe_key_and_names_it(localstripe_server):
    settings = localstripe_server.settings()
    settings["STRIPE_WEBHOOK_SECRET"] = None
    with pytest.raises(SettingsMissing, match="STRIPE_WEBHOOK_SECRET"):
        create_app(TestConfig, **settings)
    with pytest.raises(SettingsMissing, match="PAYMENT_GATEWAY='paypal'"):
        create_app(TestConfig, PAYMENT_GATEWAY="paypal")


def test_the_audit_finds_a_capture_for_a_hold_that_did_not_end_confirmed(shop, localstripe, make_product):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    reference = confirm(client, hold_id, "pm_card_visa").json["payment"]["reference"]
    localstripe.call("POST", f"/v1/payment_intents/{reference}/capture")  # taken behind our back
    found = breaches(shop)
    assert found == []  # CONFIRMING: about to be confirmed, not a breach yet
    db.session.execute(update(Order).where(Order.id == hold_id).values(status="RELEASED"))
    db.session.commit()
    assert any("refund owed" in b for b in breaches(shop))


def test_only_the_hold_page_lets_stripe_js_in(shop, localstripe, make_product):
    make_product()
    client = shop.test_client()
    hold_id = hold(client)
    page = client.get(f"/holds/{hold_id}")
    policy = page.headers["Content-Security-Policy"]
    assert f"script-src 'self' {localstripe.url}" in policy and "frame-src" in policy
    assert "Card payment needs JavaScript" in page.get_data(as_text=True)
    for other in ("/", "/products/ps5", f"/holds/{hold_id}/status"):
        assert localstripe.url not in client.get(other).headers["Content-Security-Policy"], other
    confirm(client, hold_id)
    paying = client.get(f"/holds/{hold_id}").get_data(as_text=True)
    assert f'src="{localstripe.url}/js.stripe.com/v3/"' in paying and "data-card-form" in paying
    status = json.loads(client.get(f"/holds/{hold_id}/status").data)
    assert status["payment"]["status"] == "requires_payment_method"
