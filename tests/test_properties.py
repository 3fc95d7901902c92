"""A Hypothesis state machine over the domain verbs: place, confirm, release, expire, sweep and time
moving forward, for several buyers and two products. After every step the invariants of design
section 3 hold, checked by audit() and directly against a model of what each hold should be.

Time moves forward by moving the earliest live holds' hold_expires_at into the past (as if their two
minutes ran out), and dropping the sold-out marks those lapses would have outlived (a mark never
lives longer than the earliest hold it counted).
"""

from dataclasses import dataclass
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule, run_state_machine_as_test
from sqlalchemy import func, select, update

from flashsale import keys
from flashsale.errors import HoldConfirmed, HoldExpired, IdempotencyMismatch, LimitExceeded, SoldOut
from flashsale.extensions import db, redis_store
from flashsale.inventory import catalog, expiry, holds
from flashsale.inventory.audit import audit
from flashsale.inventory.clock import db_now
from flashsale.inventory.stock import stock_levels
from flashsale.models import InventoryEvent, Order
from flashsale.payments import FakeGateway
from tests.conftest import _truncate

PRODUCTS = {"ps5": (3, 2), "gpu": (2, 1)}  # slug: (total_stock, max_per_customer)
BUYERS = ["ann@x.io", "bob@x.io", "cy+refuse@x.io"]  # "+refuse": the fake gateway declines
POLICY = holds.HoldPolicy(hold_seconds=120, lock_ttl_ms=2000, lock_wait_ms=2000, max_quantity=10)
TERMINAL = {"CONFIRMED", "EXPIRED", "RELEASED"}


@dataclass
class Hold:
    """What the model expects of one hold."""

    product: str
    email: str
    quantity: int
    status: str = "PENDING"
    lapsed: bool = False

    @property
    def active(self):
        return self.status == "CONFIRMED" or (self.status == "PENDING" and not self.lapsed)


class FlashSale(RuleBasedStateMachine):
    """Two products, three buyers, and every verb the domain offers."""

    app = None
    placed = Bundle("holds")

    def __init__(self):
        super().__init__()
        self.session, self.redis = db.session, redis_store.client
        _truncate()
        self.redis.flushdb()
        catalog.forget()
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
    def confirm(self, hold_id):
        model = self.holds[hold_id]
        with self.touching(model.product):
            order = holds.confirm_hold(self.session, self.redis, hold_id, FakeGateway())
        if model.status == "PENDING":
            model.status = ("EXPIRED" if model.lapsed
                            else "RELEASED" if "+refuse" in model.email else "CONFIRMED")
        assert order.status == model.status

    @rule(hold_id=placed)
    def release(self, hold_id):
        model = self.holds[hold_id]
        expected_error = {"CONFIRMED": HoldConfirmed, "EXPIRED": HoldExpired}.get(model.status)
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
        assert won == should_win  # invariant 3: only a lapsed PENDING hold expires, once
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
        """The earliest `count` live holds run out of time; no job runs (invariant 2: read-time)."""
        live = [(hold_id, h) for hold_id, h in self.holds.items() if h.status == "PENDING" and not h.lapsed]
        for hold_id, model in live[:count]:
            self.session.execute(update(Order).where(Order.id == hold_id).values(
                hold_expires_at=db_now(self.session) - timedelta(seconds=1)))
            model.lapsed = True
            self.redis.delete(keys.sold_out(self.product_ids[model.product]))
        self.session.commit()
        assert self.levels() == self.expected_levels()  # stock back at once, before any job

    # --- the invariants ----------------------------------------------------------------------------

    @invariant()
    def audit_passes(self):
        """Invariants 1, 3, 4, 5, 6 and 8 as `flask audit` checks them."""
        breaches = audit(self.session)
        assert breaches == [], "\n".join(map(str, breaches))

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
        max_examples=30, stateful_step_count=30, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
