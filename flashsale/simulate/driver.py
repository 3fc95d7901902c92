"""Playing the crowd over HTTP: every buyer's requests, then polling the holds until they are decided."""

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import click

from .plans import Buyer, buyer_address, plan_buyers, retry_after_seconds
from .report import TERMINAL, build_report
from .waiting_room import follow_ticket, line_report

RETRYABLE = {0, 429, 503}  # 0: no HTTP answer at all (connection refused or reset, timeout)


@dataclass
class Attempt:
    """One POST .../holds: HTTP status (0: no answer), error code, latency, when it was answered."""

    status: int
    code: str | None
    latency_ms: float
    answered_at: float


@dataclass
class BuyerResult:
    """Everything one buyer saw."""

    buyer: Buyer
    attempts: list = field(default_factory=list)
    hold: dict | None = None
    action_status: int | None = None
    ticket: dict | None = None  # the waiting-room ticket, on a product with a waiting room

    @property
    def answer(self):
        """The buyer's final answer: 'won', the last error code, or where the line left them."""
        if not self.attempts:
            return f"line: {self.ticket['state']}" if self.ticket else "no answer"
        last = self.attempts[-1]
        return "won" if last.status in (200, 201) else (last.code or f"http_{last.status}")

    @property
    def definite(self):
        """True when the buyer learned something final: a hold or a refusal, or the line's sold out."""
        if self.attempts:
            return self.attempts[-1].status not in RETRYABLE
        return bool(self.ticket) and self.ticket["state"] in ("sold_out", "closed")


def allow_open_files(wanted):
    """Raise this process's soft open-file limit towards `wanted` (one socket per request in flight)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def play(url, crowd, buyers, concurrency=256, timeout=30.0, on_answer=None, waiting_room=False,
               line_deadline_s=600.0):
    """Send the crowd; return ([BuyerResult per buyer, in buyer order], seconds from first arrival).

    On a waiting-room product each buyer first joins the line and follows its ticket until admitted
    (then buys with its admission) or told the line is over.
    """
    import aiohttp

    allow_open_files(concurrency + 256)

    gate = asyncio.Semaphore(concurrency)
    hold_url = f"{url}/api/products/{crowd.product}/holds"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as http:
        started = time.monotonic()

        async def request(method, target, **kwargs):
            """(status, body, headers, latency_ms); status 0 when no HTTP answer came."""
            async with gate:
                sent = time.monotonic()
                try:
                    async with http.request(method, target, **kwargs) as response:
                        body = await response.json(content_type=None)
                        return response.status, body, response.headers, (time.monotonic() - sent) * 1000
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    return 0, None, {}, (time.monotonic() - sent) * 1000

        async def shop(buyer):
            result = BuyerResult(buyer)
            await asyncio.sleep(max(0.0, buyer.arrives_at - (time.monotonic() - started)))
            headers = {"Idempotency-Key": f"{buyer.email}#1", "X-Forwarded-For": buyer_address(buyer.index)}
            body = {"email": buyer.email, "quantity": crowd.quantity}
            if waiting_room:
                result.ticket = await follow_ticket(request, url, crowd.product, buyer.email,
                                                    buyer_address(buyer.index), line_deadline_s)
                if not result.ticket or result.ticket["state"] != "admitted":
                    if on_answer:
                        on_answer(result)
                    return result
                headers["Admission"] = result.ticket["admission"]
            tries = 1 + (crowd.max_retries if buyer.retries else 0)
            for attempt in range(tries):
                status, answer, reply_headers, latency = await request("POST", hold_url, json=body,
                                                                       headers=headers)
                code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
                result.attempts.append(Attempt(status, code, latency, time.monotonic() - started))
                if status not in RETRYABLE or attempt == tries - 1:
                    break
                await asyncio.sleep(retry_after_seconds(reply_headers.get("Retry-After")))
            if status in (200, 201):
                result.hold = answer
                if buyer.plan in ("confirm", "release"):
                    result.action_status = (await request(
                        "POST", f"{url}/api/holds/{answer['id']}/{buyer.plan}"))[0]
            if on_answer:
                on_answer(result)
            return result

        results = await asyncio.gather(*(shop(buyer) for buyer in buyers))
        return list(results), time.monotonic() - started


class ServerUnreachable(Exception):
    """Nobody answers at the server's address (the simulation cannot start)."""


async def fetch_json(url, timeout=10.0):
    """GET url as JSON; ServerUnreachable when nothing answers there."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(url) as response:
                if response.status != 200:
                    raise click.ClickException(f"GET {url} answered {response.status}: {await response.text()}")
                return await response.json()
    except (aiohttp.ClientConnectionError, TimeoutError) as error:
        reason = getattr(error, "strerror", None) or error.__class__.__name__
        raise ServerUnreachable(f"no server answers at {url} ({reason}): is it running?") from None


async def settle(url, results, wait_for_expiry, deadline_s, concurrency=64):
    """Poll the won holds until every confirm/release is decided (and abandons expired, if asked)."""
    import aiohttp

    holds = {r.hold["id"]: r.hold for r in results if r.hold}
    plans = {r.hold["id"]: r.buyer.plan for r in results if r.hold}
    awaited = {hid for hid, plan in plans.items() if plan != "abandon" or wait_for_expiry}
    gate = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + deadline_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def refresh(hold_id):
            async with gate, http.get(f"{url}/api/holds/{hold_id}") as response:
                if response.status == 200:
                    holds[hold_id] = await response.json()

        while True:
            await asyncio.gather(*(refresh(h) for h, v in holds.items() if v["status"] not in TERMINAL))
            waiting = [h for h in awaited if holds[h]["status"] not in TERMINAL]
            if not waiting or time.monotonic() >= deadline:
                return holds, len(waiting)
            await asyncio.sleep(0.25)


async def simulate(url, crowd, rng, concurrency, settle_seconds, wait_expiry, audit, reseeded=False):
    """Play the crowd and build the report; audit(slug, hold_ids) audits where it can."""
    before = await fetch_json(f"{url}/api/products/{crowd.product}")
    # After a reseed the server's stock snapshot may lag the reset by up to its staleness bound
    # (about a second: docs/benchmark.md, "Watching"): wait, with a deadline, until it shows the full stock.
    deadline = time.monotonic() + 3
    while reseeded and before["available"] != before["total_stock"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        before = await fetch_json(f"{url}/api/products/{crowd.product}")
    buyers = plan_buyers(crowd, rng, uuid.uuid4().hex[:8])
    with click.progressbar(length=len(buyers), label="buyers answered", file=sys.stderr) as bar:
        results, elapsed = await play(url, crowd, buyers, concurrency, on_answer=lambda _r: bar.update(1),
                                      waiting_room=bool(before.get("waiting_room")))
    waiting = sum(1 for r in results if r.hold and (r.buyer.plan != "abandon" or wait_expiry))
    if waiting:
        click.echo(f"waiting up to {settle_seconds:g} s for {waiting} holds to be decided ...", err=True)
    if wait_expiry and results:
        latest = max((r.hold["hold_expires_at"] for r in results if r.hold), default=None)
        if latest:
            lapse = datetime.fromisoformat(latest.replace("Z", "+00:00")) - datetime.now(timezone.utc)
            settle_seconds = max(settle_seconds, lapse.total_seconds() + settle_seconds)
    holds, undecided = await settle(url, results, wait_expiry, settle_seconds)
    read_at = datetime.now(timezone.utc)
    after = await fetch_json(f"{url}/api/products/{crowd.product}")
    audit_result = audit(crowd.product, list(holds))
    report = build_report(crowd, url, results, before, after, holds, read_at, elapsed, audit_result)
    report["undecided_after_settle"] = undecided
    if before.get("waiting_room"):
        report["waiting_room"] = line_report(results, before["sale_starts_at"])
    return report
