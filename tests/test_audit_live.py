"""`flask audit` during a live sale on the production tier (web processes, `flask worker`, PostgreSQL,
Redis): run again and again while buyers place, confirm, release and let holds lapse and the worker
pays, it never reports a breach that is not one, and it still finds every breach planted meanwhile."""

import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from sqlalchemy import delete, func, insert, select, update

from config import TestConfig
from flashsale.extensions import db, redis_store
from flashsale.gateways.fake import FakeGateway
from flashsale.inventory import holds
from flashsale.inventory.audit import audit_report
from flashsale.inventory.confirmation import payment_key
from flashsale.inventory.holds import HoldPolicy
from flashsale.inventory.ledger import EVENTS, event_row
from flashsale.models import InventoryEvent, Order, Product
from tests.faults import DATABASE_URL, call
from tests.live_server import BIN, ROOT, LiveServer, wait_until
from tests.paying import confirm_and_pay

pytestmark = pytest.mark.postgres("a racing sale on the production web tier with a paying worker")

SERVER = {"HOLD_SECONDS": 2, "SWEEP_SECONDS": 1, "FAKE_PAYMENT_DELAY_MS": 60}
BUYERS = 6
RACE_SECONDS = 12


class Sale:
    """Buyers on two products: `mega` (plenty of stock, two per customer) and `tiny` (three units, one
    each, fought over as holds lapse). Each buyer confirms about a third of its holds (some with a
    card the fake gateway refuses), releases a sixth and lets the rest lapse."""

    def __init__(self, url):
        self.url = url
        self.stop = threading.Event()
        self.answers = []

    def buyer(self, n):
        rng = random.Random(n)
        made = 0
        while not self.stop.is_set():
            made += 1
            refuse = "+refuse" if rng.random() < 0.15 else ""
            slug = "tiny" if rng.random() < 0.3 else "mega"
            quantity = rng.choice((1, 1, 2)) if slug == "mega" else 1
            answer = call(f"{self.url}/api/products/{slug}/holds", "POST",
                          {"email": f"b{n}.{made}{refuse}@x.io", "quantity": quantity})
            self.answers.append(("hold", answer.status))
            if answer.status != 201:
                continue
            fate = rng.random()
            if fate < 1 / 3:
                self.answers.append(("confirm", call(f"{self.url}/api/holds/{answer.body['id']}/confirm",
                                                     "POST").status))
            elif fate < 1 / 2:
                self.answers.append(("release", call(f"{self.url}/api/holds/{answer.body['id']}/release",
                                                     "POST").status))

    @contextmanager
    def running(self):
        """The buyers race until the block ends."""
        with ThreadPoolExecutor(BUYERS) as pool:
            jobs = [pool.submit(self.buyer, n) for n in range(BUYERS)]
            try:
                yield self
            finally:
                self.stop.set()
                for job in jobs:
                    job.result()


def audit_now(app):
    """One audit as `flask audit` runs it (the gateway's charges included): its report."""
    with app.app_context():
        try:
            return audit_report(db.session, FakeGateway(db.engine), app.config["PAYMENT_FINAL_SECONDS"])
        finally:
            db.session.remove()


def audits_until(app, stop_at, reports):
    """Audit back to back until the monotonic clock passes stop_at."""
    while time.monotonic() < stop_at:
        reports.append(audit_now(app))


def events_between(app, first, last):
    """{event type: count} of ledger events recorded between two instants (database clock)."""
    with app.app_context():
        rows = db.session.execute(
            select(InventoryEvent.type, func.count()).where(InventoryEvent.created_at > first,
                                                            InventoryEvent.created_at < last)
            .group_by(InventoryEvent.type)).all()
        db.session.remove()
    return dict(rows)


def flask_audit(server):
    """`flask audit` as cron would run it against the live sale: (exit code, output)."""
    done = subprocess.run([str(BIN / "flask"), "--app", "app", "audit"], cwd=ROOT, env=server.env,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_the_audit_never_cries_wolf_during_a_racing_sale(app, make_product):
    make_product(slug="mega", total_stock=100_000, max_per_customer=2)
    make_product(slug="tiny", total_stock=3, max_per_customer=1)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=2, threads=8, with_worker=True,
                    **SERVER) as server:
        reports, cli = [], []
        with Sale(server.url).running() as sale, ThreadPoolExecutor(2) as auditors:
            wait_until(lambda: len(sale.answers) > 20, 30, message="the sale under way")
            stop_at = time.monotonic() + RACE_SECONDS
            jobs = [auditors.submit(audits_until, app, stop_at, reports) for _ in range(2)]
            while time.monotonic() < stop_at:
                cli.append(flask_audit(server))  # the command itself, as cron runs it, meanwhile
            for job in jobs:
                job.result()
        moved = events_between(app, min(r.at for r in reports), max(r.at for r in reports))
        wait_until(lambda: not orders_in_play(app), 60, message="every hold settled")
        settled = audit_now(app)
    breaches = [str(b) for r in reports for b in r.breaches]
    print(f"\n{len(reports)} audits in-process + {len(cli)} `flask audit` runs during the sale; ledger "
          f"events meanwhile: {moved}; audit time p50 "
          f"{sorted(r.seconds for r in reports)[len(reports) // 2] * 1000:.0f} ms; breaches reported: "
          f"{len(breaches)} by {sum(not r.passed for r in reports)} audits, `flask audit` failed "
          f"{sum(1 for code, _ in cli if code)} times")
    # The sale really raced under the audits: holds placed, confirmed (paid by the worker), refused,
    # released and lapsed while they ran.
    assert len(reports) >= 20 and cli
    assert all(moved.get(kind, 0) > 0 for kind in ("HOLD_CREATED", "CONFIRMING", "CONFIRMED", "EXPIRED",
                                                   "RELEASED")), moved
    assert breaches == [], "\n".join(breaches[:20])
    assert all(r.passed for r in reports)
    assert [code for code, _ in cli] == [0] * len(cli), [out for code, out in cli if code]
    assert settled.passed, settled.breaches


def orders_in_play(app):
    """Holds not yet decided (PENDING or CONFIRMING)."""
    with app.app_context():
        rows = db.session.execute(select(Order.id).where(Order.status.in_(["PENDING", "CONFIRMING"]))).all()
        db.session.remove()
    return rows


# --- breaches planted while the sale races ----------------------------------------------------------

POLICY = HoldPolicy(hold_seconds=600, lock_ttl_ms=2000, lock_wait_ms=5000, max_quantity=10)


def plant(app, make_product):
    """One product per kind of breach, each with a hold made sound and then broken behind the app's
    back; returns the (invariant, subject) pairs the audit must report, and nothing else."""
    for slug in ("p-missing", "p-extra", "p-delta", "p-capture"):
        make_product(slug=slug, total_stock=5)
    make_product(slug="p-over", total_stock=2)
    with app.app_context():
        session, redis = db.session, redis_store.client

        def place(slug, email="planted@x.io"):
            return holds.place_hold(session, redis, slug, email, 1, POLICY).hold.id

        missing, extra, delta, captured = (place(s) for s in ("p-missing", "p-extra", "p-delta", "p-capture"))
        place("p-over")
        place("p-over", "other@x.io")
        confirm_and_pay(session, redis, extra)
        holds.release_hold(session, redis, captured)
        # A missing event, an extra event, a wrong delta, an oversell, a capture without a CONFIRMED hold.
        session.execute(delete(InventoryEvent).where(InventoryEvent.order_id == missing))
        session.execute(insert(EVENTS).values(event_row("EXPIRED", extra, product_id(session, "p-extra"), 1,
                                                        func.now())))
        session.execute(update(InventoryEvent).where(InventoryEvent.order_id == delta).values(delta=-2))
        session.execute(update(Product).where(Product.slug == "p-over").values(total_stock=1))
        session.commit()
        FakeGateway(db.engine).charge(payment_key(captured), 49999, "planted@x.io", captured)
        db.session.remove()
    return {("8 nothing half-done", missing), ("4 ledger balance", "p-missing"),
            ("3 one outcome", extra), ("4 ledger balance", "p-extra"),
            ("4 ledger balance", delta), ("4 ledger balance", "p-delta"),
            ("1 no oversell", "p-over"),
            ("9 money follows the outcome", captured)}


def product_id(session, slug):
    return session.execute(select(Product.id).where(Product.slug == slug)).scalar_one()


def test_the_audit_finds_each_planted_breach_and_nothing_else_during_a_racing_sale(app, make_product):
    make_product(slug="mega", total_stock=100_000, max_per_customer=2)
    make_product(slug="tiny", total_stock=3, max_per_customer=1)
    with LiveServer(DATABASE_URL, TestConfig.REDIS_URL, workers=2, threads=8, with_worker=True,
                    **SERVER) as server:
        with Sale(server.url).running() as sale:
            wait_until(lambda: len(sale.answers) > 20, 30, message="the sale under way")
            planted = plant(app, make_product)
            reports = []
            stop_at = time.monotonic() + RACE_SECONDS / 2
            audits_until(app, stop_at, reports)
            code, output = flask_audit(server)
    found = [{(b.invariant, b.subject) for b in r.breaches} for r in reports]
    print(f"\n{len(reports)} audits during the sale, each finding {len(planted)} planted breaches")
    assert len(reports) >= 5
    for seen in found:
        assert seen == planted, (seen - planted, planted - seen)
    assert code == 1 and all(f"[{inv}] {subject}" in output for inv, subject in planted), output

