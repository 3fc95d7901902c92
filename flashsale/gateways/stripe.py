"""The Stripe gateway: PaymentIntents through Stripe's official library (design section 11).

Every call goes through one StripeClient with explicit timeouts and network retries, and every call
that can move money (create, confirm, capture, cancel, refund) carries an idempotency key derived from
the hold. Correctness never rests on those keys being honoured (a local Stripe ignores them): the
payment flow (inventory/intents.py) keeps the intent's id on record before any call that can authorise
or capture, and re-reads the intent whenever an answer is missing or a call is refused.

A call that gets no answer raises GatewayUnavailable (from gateways.py): what happened is unknown until
the intent is read again. A refused transition (capture of an intent not authorised, cancel of one
already captured) or a declined card is not an error here: the call answers the intent as it now is.
"""

import logging
from dataclasses import dataclass
from functools import lru_cache

import stripe

from . import GatewayUnavailable

log = logging.getLogger(__name__)

DEFAULT_API_BASE = stripe.DEFAULT_API_BASE
# The failures that leave a call's outcome unknown (no answer, or Stripe said "try again").
UNANSWERED = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


@dataclass(frozen=True)
class Intent:
    """What flashsale reads of a PaymentIntent."""

    id: str
    status: str  # requires_payment_method, requires_confirmation, requires_action, processing,
    #              requires_capture, canceled or succeeded
    amount: int
    currency: str
    hold_id: str | None  # metadata.hold_id
    client_secret: str | None
    error: str | None = None  # the last failed attempt's message (a decline, a failed 3-D Secure)
    refunded: bool = False  # its charge was given back

    @property
    def fresh(self):
        """No card was ever tried on it: the next card can go on it."""
        return self.status == "requires_payment_method" and self.error is None

    @classmethod
    def read(cls, found):
        """An Intent from the library's PaymentIntent (latest_charge expanded, or an id)."""
        found = found.to_dict() if hasattr(found, "to_dict") else found
        error = found.get("last_payment_error") or {}
        charge = found.get("latest_charge")
        refunded = bool(isinstance(charge, dict) and (charge.get("refunded") or charge.get("amount_refunded")))
        return cls(found["id"], found["status"], int(found["amount"]), found["currency"],
                   (found.get("metadata") or {}).get("hold_id"), found.get("client_secret"),
                   error.get("message") or error.get("code") or None, refunded)


class StripeGateway:
    """PaymentIntents with manual capture: one live intent per hold at a time (inventory/intents.py)."""

    by_intent = True  # the payment flow for this gateway is inventory/intents.py, not payments.py

    def __init__(self, client, publishable_key, webhook_secret, webhook_tolerance=300):
        self.client = client
        self.publishable_key = publishable_key
        self.webhook_secret = webhook_secret
        self.webhook_tolerance = webhook_tolerance

    def create_intent(self, hold_id, amount_cents, currency, key):
        """A new PaymentIntent for the hold (manual capture): nothing can be charged on it yet."""
        params = {"amount": amount_cents, "currency": currency, "capture_method": "manual",
                  "payment_method_types": ["card"], "metadata": {"hold_id": hold_id}}
        return self._call(self.client.v1.payment_intents.create, params=params,
                          options={"idempotency_key": key})

    def retrieve(self, intent_id):
        """The intent as Stripe has it now (the source of truth)."""
        return self._call(self.client.v1.payment_intents.retrieve, intent_id,
                          params={"expand": ["latest_charge"]})

    def attach_and_confirm(self, intent_id, payment_method, key):
        """Put the card on the intent, then confirm it: authorised, declined or 3-D Secure needed.

        Two calls, because a confirm that names the card is not implemented everywhere (localstripe);
        setting the card moves no money, confirming does, so only the confirm needs the key.
        """
        self._call(self.client.v1.payment_intents.update, intent_id,
                   params={"payment_method": payment_method})
        return self.confirm(intent_id, key)

    def confirm(self, intent_id, key):
        """Confirm an intent that has its card (a decline answers the declined intent)."""
        return self._transition(self.client.v1.payment_intents.confirm, intent_id, key)

    def capture(self, intent_id, key):
        """Take the authorised amount (an intent not authorised answers as it is)."""
        return self._transition(self.client.v1.payment_intents.capture, intent_id, key)

    def cancel(self, intent_id, key):
        """Cancel an intent so no card can ever be charged on it (free while only authorised)."""
        return self._transition(self.client.v1.payment_intents.cancel, intent_id, key)

    def refund(self, intent_id, key):
        """Give a captured intent's money back; answers the intent after it."""
        try:
            self.client.v1.refunds.create(params={"payment_intent": intent_id}, options={"idempotency_key": key})
        except UNANSWERED as unknown:
            raise GatewayUnavailable(f"refund of {intent_id}: {unknown.__class__.__name__}") from unknown
        except stripe.StripeError as refused:  # already refunded, or not refundable: the intent says
            log.warning("refund of %s refused: %s", intent_id, refused.user_message)
        return self.retrieve(intent_id)

    def event(self, payload, signature):
        """The event a webhook delivered, if its Stripe-Signature is good and fresh (else ValueError)."""
        try:
            return stripe.Webhook.construct_event(payload, signature or "", self.webhook_secret,
                                                  tolerance=self.webhook_tolerance)
        except stripe.SignatureVerificationError as forged:
            raise ValueError(f"bad signature: {forged.user_message}") from None

    def _transition(self, method, intent_id, key):
        try:
            return self._call(method, intent_id, params={"expand": ["latest_charge"]},
                              options={"idempotency_key": key}, refusals=True)
        except (stripe.CardError, stripe.InvalidRequestError) as refused:
            # Declined, or not allowed from the intent's state (another worker, the shopper's Stripe.js
            # or a lost answer got there first): the intent itself says where it stands.
            log.info("%s on %s refused (%s); reading the intent", method.__name__, intent_id,
                     refused.code or refused.user_message)
            return self.retrieve(intent_id)

    def _call(self, method, *args, refusals=False, **kwargs):
        """One call; no answer (or any error but a refusal the caller reads the intent after) raises
        GatewayUnavailable, so the payment stays on record and is tried again, never a 500."""
        try:
            return Intent.read(method(*args, **kwargs))
        except UNANSWERED as unknown:
            raise GatewayUnavailable(f"{method.__name__}: {unknown.__class__.__name__}: "
                                     f"{unknown.user_message}") from unknown
        except (stripe.CardError, stripe.InvalidRequestError):
            if refusals:
                raise
            log.exception("Stripe refused %s", method.__name__)
            raise GatewayUnavailable(f"{method.__name__} refused by Stripe") from None
        except stripe.StripeError as failed:  # a bad key, a permission: the operator's to fix (logged)
            log.error("Stripe call %s failed: %s", method.__name__, failed.user_message)
            raise GatewayUnavailable(f"{method.__name__}: {failed.__class__.__name__}") from failed


def gateway_from_config(config):
    """The StripeGateway these settings name (one client per process and settings)."""
    from .stripe_faults import faults_from_config

    return _gateway(config["STRIPE_SECRET_KEY"], config["STRIPE_PUBLISHABLE_KEY"], config["STRIPE_WEBHOOK_SECRET"],
                    config.get("STRIPE_API_BASE") or DEFAULT_API_BASE, float(config["STRIPE_TIMEOUT_SECONDS"]),
                    int(config["STRIPE_MAX_NETWORK_RETRIES"]), faults_from_config(config))


@lru_cache(maxsize=8)
def _gateway(secret_key, publishable_key, webhook_secret, api_base, timeout, retries, faults):
    from .stripe_faults import FaultyRequestsClient

    # (connect, read) timeouts: a connection that cannot be opened fails fast, an answer gets `timeout`.
    timeouts = (min(3.0, timeout), timeout)
    http = (FaultyRequestsClient(faults, timeout=timeouts) if faults
            else stripe.RequestsClient(timeout=timeouts))
    client = stripe.StripeClient(secret_key, base_addresses={"api": api_base}, max_network_retries=retries,
                                 http_client=http)
    return StripeGateway(client, publishable_key, webhook_secret)
