"""A Hypothesis state machine over the domain verbs: place, accept a confirmation, pay (the gateway
answering, timing out, or taking the money and losing the answer), a worker crashing mid-attempt,
reconcile, release, expire, sweep and time moving forward, for several buyers and two products.
After every step the invariants of design section 3 (1 to 9) hold, checked by audit() (with the
gateway's own charges) and directly against a model of what each hold and each charge should be.

Time moves forward by moving the earliest live holds' hold_expires_at into the past (as if their two
minutes ran out), and dropping the sold-out marks those lapses would have outlived (a mark never
lives longer than the earliest hold it counted). Payment leases and the final deadline run out by
moving attempted_at and confirmation_requested_at back.
"""

from dataclasses import dataclass
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule, run_state_machine_as_test
from sqlalchemy import func, select, true, update

from flashsale import keys
from flashsale.errors import (
    HoldConfirmed,
    HoldExpired,
    HoldReleased,
    IdempotencyMismatch,
    LimitExceeded,
    PaymentInProgress,
    SoldOut,
)
from flashsale.extensions import db, redis_store
from flashsale.gateways import GatewayUnavailable
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory import expiry, holds, payments
from flashsale.inventory.audit import audit
from flashsale.inventory.clock import db_now
from flashsale.inventory.confirmation import accept_confirmation, payment_key
from flashsale.inventory.stock import stock_levels
from flashsale.models import InventoryEvent, Order, Payment
from tests.shop import reset, turn_back

PRODUCTS = {"ps5": (3, 2), "gpu": (2, 1)}  # slug: (total_stock, max_per_customer)
BUYERS = ["ann@x.io", "bob@x.io", "cy+refuse@x.io"]  # "+refuse": the fake gateway declines
POLICY = holds.HoldPolicy(hold_seconds=120, lock_ttl_ms=2000, lock_wait_ms=2000, max_quantity=10)
TERMINAL = {"CONFIRMED", "EXPIRED", "RELEASED"}
PAYMENT_POLICY = payments.PaymentPolicy(timeout_seconds=30, final_seconds=900)
# How a charge call goes: answered, never reaching the gateway, or taking the money and losing the answer.
CALLS = ["answered", "answered", "timeout", "lost"]


class ScriptedGateway(FakeGateway):
    """The fake gateway, with this call's fate chosen by the test."""

    def __init__(self, engine, call):
        super().__init__(engine)
        self.call = call

    def charge(self, key, amount_cents, email, reference=""):
        if self.call == "timeout":
            raise GatewayUnavailable("never reached the gateway")
        charge = super().charge(key, amount_cents, email, reference)
        if self.call == "lost":
            raise GatewayUnavailable("the money was taken, the answer lost")
        return charge


@dataclass
class Hold:
    """What the model expects of one hold (and of its payment, once its confirmation is accepted)."""

    product: str
    email: str
    quantity: int
    status: str = "PENDING"
    lapsed: bool = False
    attempted: bool = False  # a payment attempt has started
    due: bool = False  # no attempt holds the lease (it ran out): a reconciler may start one
    past_final: bool = False  # the final deadline has passed since the confirmation was accepted
    charged: str | None = None  # what the gateway holds for its key: captured, refused or voided

    @property
    def active(self):
        return self.status in ("CONFIRMED", "CONFIRMING") or (self.status == "PENDING" and not self.lapsed)

    def outcome_of(self, charge_status):
        """The hold's status once a charge in this state is settled."""
        return "CONFIRMED" if charge_status == "captured" else "RELEASED"


class FlashSale(RuleBasedStateMachine):
    """Two products, three buyers, and every verb the domain offers."""

    app = None
    placed = Bundle("holds")

    def __init__(self):
        super().__init__()
        self.session, self.redis = db.session, redis_store.client
        reset()
        self.product_ids = {slug: make_product(self.session, slug, *PRODUCTS[slug]) for slug in PRODUCTS}
        self.holds, self.keys = {}, {}

    # --- the model ---------------------------------------------------------------------------------

    def units(self, product, email=None):
        return sum(h.quantity for h in self.holds.values()
                   if h.product == product and h.active and email in (None, h.email))

    def expected_levels(self):
        return {self.product_ids[slug]: PRODUCTS[slug][0] - self.units(slug) for slug in PRODUCTS}

    def ledger_size(self):
        orders = self.session.execute(select(func.count()).select_from(Order)).scalar_one()
        events = self.session.execute(select(func.count()).select_from(InventoryEvent)).scalar_one()
        self.session.rollback()
        return orders, events

    def levels(self):
        found = {pid: level.available for pid, level in stock_levels(self.session).items()}
        self.session.rollback()
        return found

    def touching(self, product):
        """Context: the other product's stock must not move (isolation, invariant 7)."""
        return _Untouched(self, {self.product_ids[s] for s in PRODUCTS if s != product})

    # --- the rules ---------------------------------------------------------------------------------

    @rule(target=placed, product=st.sampled_from(sorted(PRODUCTS)), email=st.sampled_from(BUYERS),
          quantity=st.integers(1, 3), key=st.sampled_from([None, None, "k1", "k2"]))
    def place(self, product, email, quantity, key):
        before = self.ledger_size()
        if key in self.keys:
            same_body, hold_id = self.keys[key][0] == (product, email, quantity), self.keys[key][1]
            if not same_body:
                with pytest.raises(IdempotencyMismatch):
                    holds.place_hold(self.session, self.redis, product, email, quantity, POLICY, key)
            else:
                replay = holds.place_hold(self.session, self.redis, product, email, quantity, POLICY, key)
                assert not replay.created and replay.hold.id == hold_id  # invariant 5
            assert self.ledger_size() == before
            return multiple()
        max_per_customer = PRODUCTS[product][1]
        over_limit = self.units(product, email) + quantity > max_per_customer
        short = PRODUCTS[product][0] - self.units(product) < quantity
        with self.touching(product):
            if over_limit or short:
                allowed = (LimitExceeded,) * over_limit + (SoldOut,) * short
                with pytest.raises(allowed):
                    holds.place_hold(self.session, self.redis, product, email, quantity, POLICY, key)
                assert self.ledger_size() == before  # invariant 8: a refusal writes nothing
                return multiple()
            placed = holds.place_hold(self.session, self.redis, product, email, quantity, POLICY, key)
        assert placed.created
        self.holds[placed.hold.id] = Hold(product, email, quantity)
        if key:
            self.keys[key] = ((product, email, quantity), placed.hold.id)
        return placed.hold.id

    @rule(hold_id=placed)
    def accept(self, hold_id):
        model = self.holds[hold_id]
        before = self.ledger_size()
        refusal = {"RELEASED": HoldReleased, "EXPIRED": HoldExpired}.get(model.status)
        if model.status == "PENDING" and model.lapsed:
            refusal = HoldExpired
        with self.touching(model.product):
            if refusal:
                with pytest.raises(refusal):
                    accept_confirmation(self.session, hold_id)
                assert self.ledger_size() == before  # a refusal writes nothing
                return
            accepted = accept_confirmation(self.session, hold_id)
        assert accepted.accepted_now == (model.status == "PENDING")  # the promise is made once
        if model.status == "PENDING":
            model.status = "CONFIRMING"
        assert accepted.hold.status == model.status

    def _charge(self, model, call):
        """What a charge call does to the model's gateway; returns the charge state to settle, or None."""
        if call == "timeout":
            return None
        if model.charged is None:
            model.charged = "refused" if "+refuse" in model.email else "captured"
        return None if call == "lost" else model.charged

    def _settle(self, model, charge_state):
        model.status = model.outcome_of(charge_state)

    @rule(hold_id=placed, call=st.sampled_from(CALLS))
    def pay(self, hold_id, call):
        """The payment job runs (once, twice, late): only an attempt holding the lease charges."""
        model = self.holds[hold_id]
        claims = model.status == "CONFIRMING" and (not model.attempted or model.due)
        with self.touching(model.product):
            settled = payments.take_payment(self.session, self.redis, hold_id,
                                            ScriptedGateway(db.engine, call), PAYMENT_POLICY)
        if not claims:
            assert settled.outcome == "skipped"
            return
        model.attempted, model.due = True, False
        self._expect_charge(model, call, settled)

    def _expect_charge(self, model, call, settled):
        """A charge call was made: the model follows it and the attempt's answer must agree."""
        charge_state = self._charge(model, call)
        if charge_state is None:
            assert settled.outcome == "pending"
            return
        self._settle(model, charge_state)
        assert settled.status == model.status

    @rule(hold_id=placed)
    def worker_dies_mid_attempt(self, hold_id):
        """A worker claims the payment and is killed before the gateway answers (or is even called)."""
        model = self.holds[hold_id]
        claims = model.status == "CONFIRMING" and (not model.attempted or model.due)
        claim = payments._claim(self.session, hold_id, PAYMENT_POLICY, due_only=False)
        assert (claim is not None) == claims
        if claims:
            model.attempted, model.due = True, False

    @rule()
    def leases_run_out(self):
        """PAYMENT_TIMEOUT_SECONDS pass: every attempt in flight may now be retried by a reconciler."""
        self.session.execute(update(Payment).where(Payment.attempted_at.is_(None))
                             .values(attempted_at=Payment.created_at))
        turn_back(self.session, [Payment.attempted_at, Payment.created_at], true(),
                  PAYMENT_POLICY.timeout_seconds + 1)
        self.session.commit()
        for model in self.holds.values():
            if model.status == "CONFIRMING":
                model.due = True

    @rule()
    def final_deadline_passes(self):
        """PAYMENT_FINAL_SECONDS pass since every confirmation still being paid for was accepted."""
        confirming = [hold_id for hold_id, h in self.holds.items()
                      if h.status == "CONFIRMING" and not h.past_final]
        turn_back(self.session, [Order.confirmation_requested_at, Order.hold_expires_at],
                  Order.id.in_(confirming), PAYMENT_POLICY.final_seconds + 1)
        self.session.commit()
        for hold_id in confirming:  # their two minutes ran out long ago too
            self.holds[hold_id].past_final = self.holds[hold_id].lapsed = True

    @rule(hold_id=placed, call=st.sampled_from(CALLS))
    def reconcile(self, hold_id, call):
        """A reconciler asks the gateway about a payment whose lease ran out, and settles it."""
        model = self.holds[hold_id]
        claims = model.status == "CONFIRMING" and model.due
        settled = payments.reconcile_payment(self.session, self.redis, hold_id,
                                             ScriptedGateway(db.engine, call), PAYMENT_POLICY)
        if not claims:
            assert settled.outcome == "skipped"
            return
        model.attempted, model.due = True, False
        if model.charged is not None:  # found: settled from what the gateway holds, never re-charged
            self._settle(model, model.charged)
        elif model.past_final:  # never reached: the key is voided and the hold released
            model.charged = "voided"
            self._settle(model, "voided")
        else:
            self._expect_charge(model, call, settled)
            return
        assert settled.status == model.status

    @rule(hold_id=placed)
    def release(self, hold_id):
        model = self.holds[hold_id]
        expected_error = {"CONFIRMED": HoldConfirmed, "EXPIRED": HoldExpired,
                          "CONFIRMING": PaymentInProgress}.get(model.status)
        if model.status == "PENDING" and model.lapsed:
            expected_error = HoldExpired
        with self.touching(model.product):
            if expected_error:
                with pytest.raises(expected_error):
                    holds.release_hold(self.session, self.redis, hold_id)
                return
            order = holds.release_hold(self.session, self.redis, hold_id)
        model.status = "RELEASED"
        assert order.status == "RELEASED"

    @rule(hold_id=placed)
    def expire(self, hold_id):
        model = self.holds[hold_id]
        with self.touching(model.product):
            won = expiry.expire_hold(self.session, self.redis, hold_id)
        should_win = model.status == "PENDING" and model.lapsed
        assert won == should_win  # invariant 3: only a lapsed PENDING hold expires, once (never a paying one)
        if won:
            model.status = "EXPIRED"

    @rule()
    def sweep(self):
        lapsed = [h for h in self.holds.values() if h.status == "PENDING" and h.lapsed]
        assert expiry.sweep_expired_holds(self.session, self.redis) == len(lapsed)
        for model in lapsed:
            model.status = "EXPIRED"
        # Invariant 4 at its strongest: with every lapse recorded, the ledger equals derived stock.
        moved = dict(self.session.execute(
            select(InventoryEvent.product_id, func.sum(InventoryEvent.delta))
            .group_by(InventoryEvent.product_id)).all())
        self.session.rollback()
        levels = self.levels()
        for slug, (total, _) in PRODUCTS.items():
            pid = self.product_ids[slug]
            assert total + moved.get(pid, 0) == levels[pid]

    @rule(count=st.integers(1, 3))
    def time_passes(self, count):
        """The earliest `count` live or paying holds run out of time; no job runs (invariant 2:
        read-time). A paying hold's clock has stopped: it keeps its units."""
        live = [(hold_id, h) for hold_id, h in self.holds.items()
                if (h.status == "PENDING" and not h.lapsed) or (h.status == "CONFIRMING" and not h.lapsed)]
        now = db_now(self.session)
        for hold_id, model in live[:count]:
            values = {"hold_expires_at": now - timedelta(seconds=1)}
            if model.status == "CONFIRMING":  # accepted before the clock ran out, as it must have been
                values["confirmation_requested_at"] = now - timedelta(seconds=2)
            self.session.execute(update(Order).where(Order.id == hold_id).values(**values))
            model.lapsed = True
            self.redis.delete(keys.sold_out(self.product_ids[model.product]))
        self.session.commit()
        assert self.levels() == self.expected_levels()  # stock back at once, before any job

    # --- the invariants ----------------------------------------------------------------------------

    @invariant()
    def audit_passes(self):
        """Invariants 1, 3, 4, 5, 6, 8 and 9 as `flask audit` checks them (with the gateway's charges)."""
        breaches = audit(self.session, FakeGateway(db.engine), PAYMENT_POLICY.final_seconds)
        assert breaches == [], "\n".join(map(str, breaches))

    @invariant()
    def the_gateway_holds_what_the_model_says(self):
        """Invariant 9: each hold's key holds the charge the model expects (or none); the audit above
        checks that no hold is charged under any other key."""
        gateway = FakeGateway(db.engine)
        for hold_id, model in self.holds.items():
            found = gateway.find(payment_key(hold_id))
            assert (found.status if found else None) == model.charged


    @invariant()
    def stock_is_what_the_model_says(self):
        """Invariants 1 and 2: derived stock counts exactly the confirmed and the live holds."""
        levels = self.levels()
        assert levels == self.expected_levels()
        assert all(available >= 0 for available in levels.values())

    @invariant()
    def every_hold_has_the_status_the_model_says(self):
        """Invariant 3: one outcome per hold, and terminal states never change."""
        found = dict(self.session.execute(select(Order.id, Order.status)).all())
        self.session.rollback()
        assert found == {hold_id: h.status for hold_id, h in self.holds.items()}

    @invariant()
    def no_customer_exceeds_the_limit(self):
        """Invariant 6, directly on the model."""
        for slug, (_, limit) in PRODUCTS.items():
            for email in BUYERS:
                assert self.units(slug, email) <= limit


class _Untouched:
    """Asserts that the given products' available stock is the same after the block."""

    def __init__(self, machine, product_ids):
        self.machine, self.product_ids = machine, product_ids

    def snapshot(self):
        levels = self.machine.levels()
        return {pid: levels[pid] for pid in self.product_ids}

    def __enter__(self):
        self.before = self.snapshot()

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            assert self.snapshot() == self.before, "an operation on one product moved another's stock"
        return False


def make_product(session, slug, total_stock, max_per_customer):
    from flashsale.models import Product

    now = db_now(session)
    product = Product(slug=slug, name=slug, description="", price_cents=1000, total_stock=total_stock,
                      max_per_customer=max_per_customer, sale_starts_at=now - timedelta(minutes=1),
                      sale_ends_at=now + timedelta(hours=1))
    session.add(product)
    session.commit()
    return product.id


def test_the_invariants_hold_after_every_step(ctx):
    run_state_machine_as_test(FlashSale, settings=settings(
        max_examples=60, stateful_step_count=40, deadline=None, database=None,
        # The explain phase traces every line executed (slow on Python < 3.12) to annotate a failure.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
