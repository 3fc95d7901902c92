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

import logging
import secrets
import time
from dataclasses import dataclass

from . import keys

log = logging.getLogger(__name__)

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


# KEYS[1] = the key's charge hash, KEYS[2] = index of keys. ARGV[1] = charge id to use if new,
# ARGV[2] = status if new (captured / refused / voided), ARGV[3] = amount, ARGV[4] = reference.
# Returns {id, status, amount, reference} of the charge the key holds: a key that already has one keeps
# it (idempotency), so a key is charged at most once, and a voided key can never be charged.
RECORD_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'id') == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'status', ARGV[2], 'amount', ARGV[3], 'reference', ARGV[4])
  redis.call('SADD', KEYS[2], KEYS[1])
end
return redis.call('HMGET', KEYS[1], 'id', 'status', 'amount', 'reference')
"""

# KEYS[1] = the key's charge hash. Returns {id, status, amount, reference} after turning captured
# into refunded (a refund of a refunded charge changes nothing).
REFUND_SCRIPT = """
if redis.call('HGET', KEYS[1], 'status') == 'captured' then
  redis.call('HSET', KEYS[1], 'status', 'refunded')
end
return redis.call('HMGET', KEYS[1], 'id', 'status', 'amount', 'reference')
"""

# Fault injection, by tag in the shopper's email or for every charge (FAKE_PAYMENT_FAULT):
#   timeout  the first charge call for a key never reaches the gateway (no answer, nothing taken)
#   lost     the first charge call takes the money, then the answer is lost
#   down     every charge call times out without reaching the gateway
FAULTS = ("timeout", "lost", "down")


class FakeGateway:
    """A stand-in payment provider that keeps its charges in Redis, outside any worker's memory.

    Approves every charge unless told to refuse (all, or emails containing "+refuse"). delay_ms is
    the round trip of a real provider: half of it before the charge is recorded, half after, so a
    worker killed mid-call may leave a charge taken and unanswered, as with a real one.
    """

    def __init__(self, redis, refuse_all=False, delay_ms=0, fault=None):
        if fault and fault not in FAULTS:
            raise ValueError(f"unknown FAKE_PAYMENT_FAULT {fault!r}; one of {', '.join(FAULTS)}")
        self.redis = redis
        self.refuse_all = refuse_all
        self.delay_ms = delay_ms
        self.fault = fault
        self._record = redis.register_script(RECORD_SCRIPT)
        self._refund = redis.register_script(REFUND_SCRIPT)

    def charge(self, key, amount_cents, email, reference=""):
        """Take amount_cents for this key once; a repeated key returns the first charge."""
        fault = self._fault_for(email)
        # Calls that set out for the gateway, counted there: the faults hit a key's first call only.
        calls = self.redis.hincrby(keys.fake_gateway_charge(key), "calls", 1)
        self._travel()
        if fault == "down" or (fault == "timeout" and calls == 1):
            raise GatewayUnavailable(f"no answer for {key} (fake {fault})")
        approved = not (self.refuse_all or "+refuse" in email)
        charge = self._store(key, CAPTURED if approved else REFUSED, amount_cents, reference)
        self._travel()
        if fault == "lost" and calls == 1:
            raise GatewayUnavailable(f"answer for {key} lost (fake lost)")
        return charge

    def find(self, key):
        """The charge made with this key, or None if no call with it ever reached the gateway."""
        values = self.redis.hmget(keys.fake_gateway_charge(key), *FIELDS)
        return _charge(key, values) if values[0] else None

    def void(self, key):
        """Make sure no charge is ever taken with this key; returns the charge if one already was."""
        charge = self._store(key, VOIDED, 0, "")
        return None if charge.status == VOIDED else charge

    def refund(self, charge):
        """Give back a captured charge (a second refund changes nothing)."""
        log.info("refunding %s (%d cents)", charge.id, charge.amount_cents)
        values = self._refund(keys=[keys.fake_gateway_charge(charge.key)])
        return _charge(charge.key, values)

    def charges(self):
        """Every charge the gateway holds (a real provider's dashboard; the audit reads it)."""
        prefix = keys.fake_gateway_charge("")
        stored = [k.decode() for k in self.redis.smembers(keys.fake_gateway_index())]
        pipe = self.redis.pipeline(transaction=False)
        for stored_key in stored:
            pipe.hmget(stored_key, *FIELDS)
        found = zip(stored, pipe.execute(), strict=True)
        return [_charge(k.removeprefix(prefix), values) for k, values in found if values[0]]

    def forget(self, idempotency_keys):
        """Drop the charges made with these keys (a demo sale reset with its paid orders deleted); a real
        provider keeps them, and their refunds are the shop's business."""
        charge_keys = [keys.fake_gateway_charge(key) for key in idempotency_keys]
        if charge_keys:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(*charge_keys)
            pipe.srem(keys.fake_gateway_index(), *charge_keys)
            pipe.execute()
        return len(charge_keys)

    def _store(self, key, status, amount_cents, reference):
        values = self._record(keys=[keys.fake_gateway_charge(key), keys.fake_gateway_index()],
                              args=[f"fake_ch_{secrets.token_hex(8)}", status, amount_cents, reference])
        return _charge(key, values)

    def _fault_for(self, email):
        tagged = [fault for fault in FAULTS if f"+{fault}" in email]
        return tagged[0] if tagged else self.fault

    def _travel(self):
        if self.delay_ms:
            time.sleep(self.delay_ms / 2000)  # half the round trip of a real provider's API


FIELDS = ("id", "status", "amount", "reference")


def _charge(key, values):
    charge_id, status, amount, reference = (v.decode() if isinstance(v, bytes) else v for v in values)
    return Charge(charge_id, key, status, int(amount), reference or "")


def gateway_from_config(config, redis):
    """The gateway named by PAYMENT_GATEWAY (only "fake" ships with flashsale)."""
    name = config["PAYMENT_GATEWAY"]
    if name != "fake":
        raise ValueError(f"unknown PAYMENT_GATEWAY {name!r}")
    return FakeGateway(redis, config["FAKE_PAYMENT_REFUSE"], config["FAKE_PAYMENT_DELAY_MS"],
                       config.get("FAKE_PAYMENT_FAULT") or None)


def forget_demo_charges(config, redis, payment_keys):
    """With the fake gateway, drop its charges for deleted payments; True when it did. A real gateway
    keeps its charges: a shop that deletes paid orders settles them there."""
    gateway = gateway_from_config(config, redis)
    if not hasattr(gateway, "forget"):
        return False
    gateway.forget(payment_keys)
    return True
