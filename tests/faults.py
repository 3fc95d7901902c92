"""Talking to a live server as crowds do (plain HTTP calls, bursts from threads or asyncio), and the
database facts every live test checks afterwards (which holds exist, and that audit() passes)."""

import asyncio
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
from sqlalchemy import select
from werkzeug.datastructures import Headers

from config import TestConfig
from flashsale.extensions import db
from flashsale.inventory.audit import audit
from flashsale.models import Order

DATABASE_URL = TestConfig.SQLALCHEMY_DATABASE_URI


@dataclass
class Answer:
    """One HTTP answer (status 0 when the connection failed), with when it was sent and how long it took."""

    status: int
    body: dict
    headers: Headers
    sent_at: float
    seconds: float
    email: str | None = None

    @property
    def code(self):
        return (self.body.get("error") or {}).get("code")


def call(url, method="GET", body=None, headers=None, timeout=30):
    """Send one request with a fresh connection; never raises for HTTP or connection errors."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Connection": "close", **(headers or {})})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, head = response.status, response.read(), Headers(response.headers.items())
    except urllib.error.HTTPError as error:
        # Header names are case-insensitive (granian sends them lower-case): look them up that way.
        status, raw, head = error.code, error.read(), Headers(error.headers.items())
    except OSError as error:
        return Answer(0, {"transport_error": repr(error)}, Headers(), started, time.monotonic() - started)
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"raw": raw[:200].decode(errors="replace")}
    return Answer(status, parsed, head, started, time.monotonic() - started)


def hold(url, slug, email, **headers):
    """POST a one-unit hold."""
    answer = call(f"{url}/api/products/{slug}/holds", "POST", {"email": email}, headers)
    answer.email = email
    return answer


def burst(url, slug, emails, concurrency=16, **headers):
    """Place holds for every email with `concurrency` clients at once; answers in email order."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda email: hold(url, slug, email, **headers), emails))


async def fire(url, requests, concurrency=None):
    """Send every (path, json, headers) at once; return [(status, body)] in order."""
    connector = aiohttp.TCPConnector(limit=concurrency or 0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        async def one(path, body, headers):
            async with client.post(url + path, json=body, headers=headers or {}) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(*request) for request in requests))


def orders(app, **filters):
    """{hold id: Order} for every order matching filters."""
    with app.app_context():
        rows = db.session.execute(select(Order).filter_by(**filters)).scalars().all()
        found = {row.id: row for row in rows}
        db.session.expunge_all()
        db.session.remove()
        return found


def assert_audit_passes(app):
    """The invariant checks `flask audit` runs find nothing wrong, the gateway's charges included."""
    from flashsale.gateways.fake import FakeGateway

    with app.app_context():
        breaches = audit(db.session, FakeGateway(db.engine), app.config["PAYMENT_FINAL_SECONDS"])
        db.session.remove()
    assert breaches == [], "\n".join(map(str, breaches))


def payments_of(app):
    """{hold id: (state, attempts)} of every payment."""
    from flashsale.models import Payment

    with app.app_context():
        rows = db.session.execute(select(Payment.order_id, Payment.state, Payment.attempts)).all()
        db.session.remove()
    return {hold_id: (state, attempts) for hold_id, state, attempts in rows}


def gateway_record(app, hold_id):
    """What the fake gateway holds for a hold's key: {"calls", "status", ...} (no "status": no charge
    recorded; empty: no call ever set out), read from its own table as any process sees it."""
    from flashsale.inventory.confirmation import payment_key
    from flashsale.models import FakeGatewayCharge

    table = FakeGatewayCharge.__table__
    with app.app_context():
        with db.engine.connect() as connection:
            row = connection.execute(select(table).where(table.c.idempotency_key == payment_key(hold_id))).first()
    if row is None:
        return {}
    return {name: value for name, value in row._asdict().items() if value is not None}


def assert_every_accepted_hold_is_stored(app, answers):
    """Each 201 a client received is a hold in the database, and no hold exists that nobody was given."""
    accepted = {answer.body["id"] for answer in answers if answer.status == 201}
    stored = set(orders(app))
    assert accepted <= stored, f"accepted holds missing from the database: {accepted - stored}"
    return accepted, stored
