"""Payment gateways: pluggable, called by the confirm job outside any lock or transaction."""

import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Charge:
    """The gateway's answer to a charge: its reference and whether the money was taken."""

    id: str
    approved: bool
    amount_cents: int


class FakeGateway:
    """Approves every charge unless told to refuse (all, or emails containing "+refuse")."""

    def __init__(self, refuse_all=False, delay_ms=0):
        self.refuse_all = refuse_all
        self.delay_ms = delay_ms
        self.charges = []
        self.refunds = []

    def charge(self, hold_id, amount_cents, email):
        """Take the money for a hold; the hold id makes a retried charge the same charge."""
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000)  # stands in for the network call to a real gateway
        approved = not (self.refuse_all or "+refuse" in email)
        charge = Charge(f"fake_{hold_id}", approved, amount_cents)
        self.charges.append(charge)
        return charge

    def refund(self, charge):
        """Give back a charge taken for a hold that lapsed before it could be confirmed."""
        log.info("refunding %s (%d cents)", charge.id, charge.amount_cents)
        self.refunds.append(charge)


def gateway_from_config(config):
    """The gateway named by PAYMENT_GATEWAY (only "fake" ships with flashsale)."""
    name = config["PAYMENT_GATEWAY"]
    if name != "fake":
        raise ValueError(f"unknown PAYMENT_GATEWAY {name!r}")
    return FakeGateway(config["FAKE_PAYMENT_REFUSE"], config["FAKE_PAYMENT_DELAY_MS"])
