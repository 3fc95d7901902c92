"""order.confirmed after a Stripe capture: the PaymentIntent's id is the payment reference the shop
matches, with the amount and currency the intent was made for (against localstripe)."""

import json

import pytest
from sqlalchemy import select

from config import TestConfig
from flashsale import create_app
from flashsale.extensions import db
from flashsale.models import WebhookEvent
from flashsale.worker import jobs


@pytest.fixture(scope="module")
def stripe_app(app, localstripe_server):
    settings = localstripe_server.settings(STRIPE_MAX_NETWORK_RETRIES=0, STRIPE_TIMEOUT_SECONDS=5)
    settings.update(STRIPE_MAX_NETWORK_RETRIES=0, STRIPE_TIMEOUT_SECONDS=5.0)
    return create_app(TestConfig, **settings)


def test_a_stripe_capture_announces_the_intent_as_the_payment_reference(stripe_app, localstripe, make_product):
    make_product(max_per_customer=2, price_cents=1250, currency="eur")
    with stripe_app.app_context():
        client = stripe_app.test_client()
        hold_id = client.post("/api/products/ps5/holds", json={"email": "Ann@Example.com", "quantity": 2}).json["id"]
        answer = client.post(f"/api/holds/{hold_id}/confirm", json={"payment_method": "pm_card_visa"})
        reference = answer.json["payment"]["reference"]
        assert jobs.pay(hold_id).outcome == "confirmed"
        [(kind, body)] = db.session.execute(select(WebhookEvent.type, WebhookEvent.body)).all()
        db.session.remove()
    data = json.loads(body)["data"]
    assert kind == "order.confirmed" and reference.startswith("pi_")
    assert (data["payment_reference"], data["amount_cents"], data["currency"]) == (reference, 2500, "eur")
    assert (data["email"], data["payment"]["status"], data["status"]) == ("ann@example.com", "captured", "CONFIRMED")
