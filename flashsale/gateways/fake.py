"""The fake payment gateway: a stand-in provider that keeps its charges in a database table of its own."""

import logging
import secrets
import time
from contextlib import contextmanager

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from ..database import READ_SNAPSHOT
from ..models import FakeGatewayCharge
from . import CAPTURED, REFUNDED, REFUSED, VOIDED, Charge, GatewayUnavailable

log = logging.getLogger(__name__)

CHARGES = FakeGatewayCharge.__table__
FIELDS = (CHARGES.c.idempotency_key, CHARGES.c.charge_id, CHARGES.c.status, CHARGES.c.amount_cents,
          CHARGES.c.reference)

# Fault injection, by tag in the shopper's email or for every charge (FAKE_PAYMENT_FAULT):
#   timeout  the first charge call for a key never reaches the gateway (no answer, nothing taken)
#   lost     the first charge call takes the money, then the answer is lost
#   down     every charge call times out without reaching the gateway
FAULTS = ("timeout", "lost", "down")


class FakeGateway:
    """A stand-in payment provider that keeps its charges in the fake_gateway_charges table.

    It stands for an external provider, so every write is a transaction of its own on `engine`, committed
    before it answers and never part of the engine's session: rolling the engine's work back cannot undo a
    charge, and a Redis failover cannot lose one. The idempotency key is the table's primary key, so a key
    is charged at most once and a voided key can never be charged.

    Approves every charge unless told to refuse (all, or emails containing "+refuse"). delay_ms is
    the round trip of a real provider: half of it before the charge is recorded, half after, so a
    worker killed mid-call may leave a charge taken and unanswered, as with a real one.
    """

    def __init__(self, engine, refuse_all=False, delay_ms=0, fault=None):
        if fault and fault not in FAULTS:
            raise ValueError(f"unknown FAKE_PAYMENT_FAULT {fault!r}; one of {', '.join(FAULTS)}")
        self.engine = engine
        self.refuse_all = refuse_all
        self.delay_ms = delay_ms
        self.fault = fault

    def charge(self, key, amount_cents, email, reference=""):
        """Take amount_cents for this key once; a repeated key returns the first charge."""
        fault = self._fault_for(email)
        # Calls that set out for the gateway, counted there: the faults hit a key's first call only.
        with _no_answer(key):
            calls = self._count_call(key)
        self._travel()
        if fault == "down" or (fault == "timeout" and calls == 1):
            raise GatewayUnavailable(f"no answer for {key} (fake {fault})")
        approved = not (self.refuse_all or "+refuse" in email)
        with _no_answer(key):
            charge = self._store(key, CAPTURED if approved else REFUSED, amount_cents, reference)
        self._travel()
        if fault == "lost" and calls == 1:
            raise GatewayUnavailable(f"answer for {key} lost (fake lost)")
        return charge

    def find(self, key):
        """The charge made with this key, or None if no call with it ever reached the gateway."""
        with _no_answer(key), self._reading() as connection:
            row = connection.execute(select(*FIELDS).where(CHARGES.c.idempotency_key == key,
                                                           CHARGES.c.status.is_not(None))).one_or_none()
        return _charge(row) if row else None

    def calls(self, key):
        """How many charge calls with this key set out for the gateway (0: none)."""
        with self._reading() as connection:
            return connection.execute(select(CHARGES.c.calls).where(CHARGES.c.idempotency_key == key)
                                      ).scalar_one_or_none() or 0

    def void(self, key):
        """Make sure no charge is ever taken with this key; returns the charge if one already was."""
        with _no_answer(key):
            charge = self._store(key, VOIDED, 0, "")
        return None if charge.status == VOIDED else charge

    def refund(self, charge):
        """Give back a captured charge (a second refund changes nothing)."""
        log.info("refunding %s (%d cents)", charge.id, charge.amount_cents)
        with _no_answer(charge.key), self.engine.begin() as connection:
            connection.execute(update(CHARGES).where(CHARGES.c.idempotency_key == charge.key,
                                                     CHARGES.c.status == CAPTURED).values(status=REFUNDED))
            return _charge(connection.execute(select(*FIELDS).where(CHARGES.c.idempotency_key == charge.key)).one())

    def charges(self):
        """Every charge the gateway holds (a real provider's dashboard; the audit reads it)."""
        with self._reading() as connection:
            rows = connection.execute(select(*FIELDS).where(CHARGES.c.status.is_not(None))
                                      .order_by(CHARGES.c.idempotency_key)).all()
        return [_charge(row) for row in rows]

    def forget(self, idempotency_keys):
        """Drop the charges made with these keys (a demo sale reset with its paid orders deleted); a real
        provider keeps them, and their refunds are the shop's business."""
        idempotency_keys = list(idempotency_keys)
        with self.engine.begin() as connection:
            for start in range(0, len(idempotency_keys), 500):
                connection.execute(CHARGES.delete().where(
                    CHARGES.c.idempotency_key.in_(idempotency_keys[start:start + 500])))
        return len(idempotency_keys)

    def _count_call(self, key):
        """Count one more call for the key (its row, with no charge yet, appears with the first)."""
        with self.engine.begin() as connection:
            return connection.execute(
                self._insert().values(idempotency_key=key, calls=1)
                .on_conflict_do_update(index_elements=[CHARGES.c.idempotency_key],
                                       set_={"calls": CHARGES.c.calls + 1})
                .returning(CHARGES.c.calls)).scalar_one()

    def _store(self, key, status, amount_cents, reference):
        """Record the key's charge unless it has one (then that one stands): the charge the key holds."""
        values = {"charge_id": f"fake_ch_{secrets.token_hex(8)}", "status": status, "amount_cents": amount_cents,
                  "reference": reference or ""}
        with self.engine.begin() as connection:
            # A new key gets its row here; a key with calls but no charge yet gets its charge below. On
            # PostgreSQL a rival transaction's row or update is waited for, and then stands.
            connection.execute(self._insert().values(idempotency_key=key, **values)
                               .on_conflict_do_nothing(index_elements=[CHARGES.c.idempotency_key]))
            connection.execute(update(CHARGES).where(CHARGES.c.idempotency_key == key, CHARGES.c.status.is_(None))
                               .values(**values))
            return _charge(connection.execute(select(*FIELDS).where(CHARGES.c.idempotency_key == key)).one())

    def _insert(self):
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(CHARGES)

    def _reading(self):
        # On SQLite a read need not take the single writer lock (database.READ_SNAPSHOT).
        return self.engine.connect().execution_options(**{READ_SNAPSHOT: True})

    def _fault_for(self, email):
        tagged = [fault for fault in FAULTS if f"+{fault}" in email]
        return tagged[0] if tagged else self.fault

    def _travel(self):
        if self.delay_ms:
            time.sleep(self.delay_ms / 2000)  # half the round trip of a real provider's API


@contextmanager
def _no_answer(key):
    """The fake's database unreachable (or, on SQLite, its write lock not had in time) is a provider that
    did not answer: the outcome is unknown, and reconciliation asks again later."""
    try:
        yield
    except OperationalError as error:
        raise GatewayUnavailable(f"no answer for {key} (the fake's database: {error.__class__.__name__})") from error


def _charge(row):
    return Charge(row.charge_id, row.idempotency_key, row.status, int(row.amount_cents), row.reference or "")
