"""Payment gateways: pluggable, called by the payment job outside any lock or transaction.

A gateway offers what a real payment provider does and what reconciliation needs:

    charge(key, amount_cents, email, reference) -> Charge
                                                 the same key returns the first charge, never a
                                                 second; reference (the hold) is kept with it
    find(key) -> Charge | None                   what happened to a key (None: never reached us)
    void(key) -> Charge | None                   no charge will ever be taken with key; returns the
                                                 charge if one already was (then it cannot be voided)
    refund(charge) -> Charge                     give a captured charge back (idempotent)

A call that gets no answer (a timeout, a dropped connection) raises GatewayUnavailable: the outcome is
unknown, and only find() can tell later.
"""

from dataclasses import dataclass

CAPTURED, REFUSED, VOIDED, REFUNDED = "captured", "refused", "voided", "refunded"


class GatewayUnavailable(Exception):
    """The gateway did not answer: the charge may or may not have been taken."""


@dataclass(frozen=True)
class Charge:
    """What the gateway holds for one idempotency key."""

    id: str
    key: str
    status: str  # captured, refused, voided or refunded
    amount_cents: int
    reference: str = ""  # what the charge was for (the hold id), as a real provider's metadata

    @property
    def approved(self):
        """True when the money was taken (and not given back)."""
        return self.status == CAPTURED


def gateway_from_config(config, redis):
    """The gateway named by PAYMENT_GATEWAY: "fake" (the default) or "stripe" (stripe.py; only then is
    the `stripe` library imported)."""
    name = config["PAYMENT_GATEWAY"]
    if name == "stripe":
        from .stripe import gateway_from_config as stripe_gateway

        return stripe_gateway(config)
    if name != "fake":
        raise ValueError(f"unknown PAYMENT_GATEWAY {name!r}")
    from ..extensions import db
    from .fake import FakeGateway

    # The fake keeps its record in the app's database (its own table and transactions), not in Redis.
    return FakeGateway(db.engine, config["FAKE_PAYMENT_REFUSE"], config["FAKE_PAYMENT_DELAY_MS"],
                       config.get("FAKE_PAYMENT_FAULT") or None)


def forget_demo_charges(config, redis, payment_keys):
    """With the fake gateway, drop its charges for deleted payments; True when it did. A real gateway
    keeps its charges: a shop that deletes paid orders settles them there."""
    gateway = gateway_from_config(config, redis)
    if not hasattr(gateway, "forget"):
        return False
    gateway.forget(payment_keys)
    return True
