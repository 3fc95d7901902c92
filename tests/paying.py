"""Confirming and paying for a hold in one call, as the request and the worker do it in turn."""

from flashsale.extensions import db
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory.confirmation import accept_confirmation
from flashsale.inventory.payments import take_payment


def confirm_and_pay(session, redis, hold_id, gateway=None, **gateway_options):
    """Accept the confirmation (the request's part), then take the payment (the worker's part)."""
    accept_confirmation(session, hold_id)
    settled = take_payment(session, redis, hold_id, gateway or FakeGateway(db.engine, **gateway_options))
    session.commit()  # ends the worker's transaction, as its job's teardown does (and expires what it read)
    return settled
