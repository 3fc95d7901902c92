"""`flask simulate`: play a crowd of buyers against a running server and report what each of them got.

Every buyer is a distinct email (and, for servers that trust one proxy hop, a distinct X-Forwarded-For
address) that arrives at once (burst) or spread over a ramp, asks for a hold through the JSON API, and if
it wins either confirms, abandons (lets the hold lapse) or releases it. Buyers answered 503/429 retry after
Retry-After when their share says so, with the same Idempotency-Key, as a well-behaved client would.

The pure parts (buyer plans, percentiles, the report and its table) take plain values, so they are tested
without a server; `play` is the only part that talks HTTP.
"""

import asyncio
import json
import math
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import click
from flask.cli import with_appcontext

from .simulate_queue import follow_ticket, line_report, line_text

RETRYABLE = {0, 429, 503}  # 0: no HTTP answer at all (connection refused or reset, timeout)
TERMINAL = {"CONFIRMED", "EXPIRED", "RELEASED"}
PLANS = ("confirm", "abandon", "release")
CLOCK_MARGIN_S = 2.0  # holds this close to expiry are not counted as kept (client/server clock skew)


@dataclass
class Crowd:
    """Who arrives, how, and what they do: a scenario's `crowd:` block, overridable from the CLI."""

    product: str
    buyers: int = 1000
    arrival: str = "burst"
    ramp_seconds: float = 0.0
    confirm_share: float = 0.7
    abandon_share: float = 0.2
    release_share: float = 0.1
    retry_share: float = 0.5
    quantity: int = 1
    max_retries: int = 3

    @classmethod
    def from_spec(cls, spec, **overrides):
        """A crowd from a scenario's crowd dict plus the options given (None means not given)."""
        known = {k: v for k, v in dict(spec or {}).items() if k in cls.__dataclass_fields__}
        known.update({k: v for k, v in overrides.items() if v is not None})
        crowd = cls(**known)
        if crowd.arrival not in ("burst", "ramp"):
            raise ValueError(f"arrival must be burst or ramp, not {crowd.arrival!r}")
        if crowd.buyers < 1 or crowd.quantity < 1:
            raise ValueError("buyers and quantity must be at least 1")
        return crowd


@dataclass
class Buyer:
    """One simulated shopper: when they arrive and what they do if they win a hold."""

    index: int
    email: str
    arrives_at: float
    plan: str
    retries: bool


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


def plan_buyers(crowd, rng, run_id):
    """The crowd's buyers: distinct emails, arrival offsets, and each one's plan and retry habit."""
    shares = [max(0.0, crowd.confirm_share), max(0.0, crowd.abandon_share), max(0.0, crowd.release_share)]
    if not sum(shares):
        shares = [0.0, 1.0, 0.0]
    buyers = []
    for i in range(crowd.buyers):
        offset = crowd.ramp_seconds * i / crowd.buyers if crowd.arrival == "ramp" else 0.0
        plan = rng.choices(PLANS, weights=shares)[0]
        buyers.append(Buyer(i, f"sim-{run_id}-{i}@example.com", offset, plan,
                            rng.random() < crowd.retry_share))
    return buyers


def buyer_address(index):
    """A distinct private address per buyer (believed only by servers with TRUSTED_PROXIES >= 1)."""
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


def retry_after_seconds(header, default=1.0, cap=30.0):
    """Seconds to wait from a Retry-After header (delta-seconds; anything else means `default`)."""
    try:
        return min(cap, max(0.0, float(header)))
    except (TypeError, ValueError):
        return default


def percentile(values, q):
    """The q-th percentile by nearest rank (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def time_to_sell_out(results, units_available):
    """Seconds until the holds won covered every unit available at the start (None: never)."""
    wins = sorted((r.attempts[-1].answered_at, r.hold.get("quantity", 1))
                  for r in results if r.hold)
    taken = 0
    for answered_at, quantity in wins:
        taken += quantity
        if units_available and taken >= units_available:
            return answered_at
    return None


def kept_units(holds, read_at):
    """Units our holds still take at read_at: confirmed or being paid for, or pending and not yet
    lapsed by then."""
    kept = 0
    for hold in holds.values():
        if hold["status"] in ("CONFIRMED", "CONFIRMING"):
            kept += hold["quantity"]
        elif hold["status"] == "PENDING":
            expires = datetime.fromisoformat(hold["hold_expires_at"].replace("Z", "+00:00"))
            if (expires - read_at).total_seconds() > CLOCK_MARGIN_S:
                kept += hold["quantity"]
    return kept


def response_label(attempt):
    """'201 created', '409 sold_out', '503 unavailable', 'no answer' ..."""
    if not attempt.status:
        return "no answer"
    return f"{attempt.status} {attempt.code or {200: 'replayed', 201: 'created'}.get(attempt.status, 'ok')}"


def confirmation_report(results, holds):
    """Confirmations asked, accepted (202/200) and kept (ended CONFIRMED), and the time to confirm."""
    asked = [r for r in results if r.hold and r.buyer.plan == "confirm"]
    accepted = [r.hold["id"] for r in asked if r.action_status in (200, 202)]
    ended = Counter(holds.get(h, {}).get("status") for h in accepted)
    waits = []
    for hold_id in accepted:
        hold = holds.get(hold_id, {})
        if hold.get("confirmed_at") and hold.get("confirmation_requested_at"):
            waits.append((_parse(hold["confirmed_at"]) - _parse(hold["confirmation_requested_at"]))
                         .total_seconds())
    return {
        "asked": len(asked), "accepted": len(accepted),
        "refused": sum(1 for r in asked if r.action_status == 409),
        "kept": ended.get("CONFIRMED", 0), "payment_refused_or_unfinished": ended.get("RELEASED", 0),
        "still_paying": ended.get("CONFIRMING", 0),
        "time_to_confirm_s": {f"p{q}": _round(percentile(waits, q)) for q in (50, 99)}
        | {"max": _round(max(waits) if waits else None)},
    }


def _parse(moment):
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def build_report(crowd, url, results, before, after, holds, read_at, elapsed, audit_result):
    """The simulation's report as a JSON-ready dict, with `ok` false on any breach found."""
    attempts = [a for r in results for a in r.attempts]
    latencies = [a.latency_ms for a in attempts if a.status]
    responses = Counter(response_label(a) for a in attempts)
    answers = Counter(r.answer for r in results)
    won = [r for r in results if r.hold]
    statuses = Counter(h["status"] for h in holds.values())
    units_won = sum(r.hold.get("quantity", 1) for r in won)
    kept = kept_units(holds, read_at)
    total, available = after["total_stock"], after["available"]
    checks = {
        "available_not_negative": available >= 0,
        "kept_within_stock": kept <= total,
        "kept_plus_available_within_stock": kept + available <= total,
        "audit": audit_result["status"],
    }
    answered = [r.attempts[-1].answered_at for r in results if r.attempts]
    return {
        "url": url,
        "product": crowd.product,
        "crowd": {"buyers": crowd.buyers, "arrival": crowd.arrival, "ramp_seconds": crowd.ramp_seconds,
                  "quantity": crowd.quantity, "plans": dict(Counter(r.buyer.plan for r in results)),
                  "retriers": sum(r.buyer.retries for r in results)},
        "responses": dict(sorted(responses.items())),
        "retries": len(attempts) - len(results),
        "answers": dict(answers.most_common()),
        "stock": {"total": before["total_stock"], "available_before": before["available"],
                  "available_after": available},
        "holds_won": len(won),
        "units_won": units_won,
        "units_kept": kept,
        "outcomes": {s.lower(): statuses.get(s, 0)
                     for s in ("CONFIRMED", "CONFIRMING", "EXPIRED", "RELEASED", "PENDING")},
        "confirmations": confirmation_report(results, holds),
        "time_to_sell_out_s": _round(time_to_sell_out(results, before["available"])),
        "time_to_all_answered_s": _round(max(answered) if answered else None),
        "duration_s": _round(elapsed),
        "latency_ms": {f"p{q}": _round(percentile(latencies, q), 1) for q in (50, 95, 99)}
        | {"max": _round(max(latencies) if latencies else None, 1), "count": len(latencies)},
        "checks": checks,
        "audit": audit_result,
        "ok": all(v for k, v in checks.items() if k != "audit") and audit_result["status"] != "failed",
    }


def _round(value, digits=3):
    return None if value is None else round(value, digits)


def render(report):
    """The report as the table `flask simulate` prints."""
    def join(counts):
        return " · ".join(f"{k} {v}" for k, v in counts.items()) or "-"

    def seconds(value):
        return "never (not sold out)" if value is None else f"{value:.2f} s"

    latency = report["latency_ms"]
    stock, checks, audit = report["stock"], report["checks"], report["audit"]
    oversell = "ok" if all(checks[k] for k in checks if k != "audit") else "BREACH"
    rows = [
        ("crowd", f"{report['crowd']['buyers']} buyers, {report['crowd']['arrival']}"
                  + (f" over {report['crowd']['ramp_seconds']} s" if report["crowd"]["arrival"] == "ramp"
                     else "") + f", plans {join(report['crowd']['plans'])}"),
        ("responses", join(report["responses"]) + f"  (retries {report['retries']})"),
        ("answers", join(report["answers"])),
        ("holds won", f"{report['holds_won']} holds, {report['units_won']} units, "
                      f"of {stock['available_before']} available (stock {stock['total']})"),
        ("outcomes", join(report["outcomes"])),
        ("confirmations", confirmations_text(report["confirmations"])),
        ("time to sell out", seconds(report["time_to_sell_out_s"])),
        ("all answered", seconds(report["time_to_all_answered_s"])),
        ("latency (hold)", " · ".join(f"{k} {v} ms" for k, v in latency.items() if k != "count")
         + f"  ({latency['count']} requests)"),
        ("oversell (API)", f"{oversell}: available {stock['available_after']} >= 0, "
                           f"{report['units_kept']} units kept + {stock['available_after']} available "
                           f"<= {stock['total']}"),
        ("audit", audit["status"] + (f": {audit['note']}" if audit.get("note") else "")),
    ]
    if report.get("waiting_room"):
        rows[3:3] = line_text(report["waiting_room"])
    rows += [("", f"BREACH {breach}") for breach in audit.get("breaches", [])]
    if report.get("undecided_after_settle"):
        rows.append(("note", f"{report['undecided_after_settle']} confirmations were still undecided when "
                             "the wait ended: is a worker running (flask worker)?"))
    if any(label.startswith("429") for label in report["responses"]):
        rows.append(("note", "429 rate_limited: the server limits per address; on a test server set "
                             "RATELIMIT_ENABLED=false, or TRUSTED_PROXIES=1 (we send one address per buyer)"))
    width = max(len(label) for label, _ in rows)
    title = f"flash sale on {report['product']} at {report['url']} ({report['duration_s']} s)"
    return "\n".join([title] + [f"  {label:<{width}}  {value}" for label, value in rows]
                     + ["", "OK: nothing oversold" if report["ok"] else "FAILED: see the breaches above"])


def confirmations_text(c):
    """'70 asked · 70 accepted · 70 kept · 0 refused by payment; accepted -> paid p50 0.31 s, p99 ...'."""
    wait = c["time_to_confirm_s"]
    timing = ("" if wait["p50"] is None else
              f"; accepted -> paid p50 {wait['p50']:.2f} s, p99 {wait['p99']:.2f} s, max {wait['max']:.2f} s")
    late = f" · {c['refused']} too late" if c["refused"] else ""
    paying = f" · {c['still_paying']} still paying" if c["still_paying"] else ""
    return (f"{c['asked']} asked · {c['accepted']} accepted · {c['kept']} kept"
            f" · {c['payment_refused_or_unfinished']} refused by payment{late}{paying}{timing}")


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


async def fetch_json(url, timeout=10.0):
    """GET url as JSON."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(url) as response:
            if response.status != 200:
                raise click.ClickException(f"GET {url} answered {response.status}: {await response.text()}")
            return await response.json()


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


def audit_here(slug, hold_ids):
    """Run the audit in-process when this app's database is the server's, else say why not."""
    from flask import current_app
    from sqlalchemy import func, select

    from .extensions import db, redis_store
    from .gateways import gateway_from_config
    from .inventory.audit import audit
    from .models import Order, Product

    try:
        session = db.session
        if hold_ids:
            found = session.execute(select(func.count()).select_from(Order)
                                    .where(Order.id.in_(hold_ids))).scalar_one()
            same = found == len(hold_ids)
        else:
            same = session.execute(select(Product.id).where(Product.slug == slug)).first() is not None
        if not same:
            session.rollback()
            return {"status": "skipped", "note": "this DATABASE_URL is not the server's database "
                                                 "(run with the server's DATABASE_URL to audit)"}
        config = current_app.config
        gateway = gateway_from_config(config, redis_store.client)
        breaches = [str(b) for b in audit(session, gateway, config["PAYMENT_FINAL_SECONDS"])]
    except Exception as error:  # noqa: BLE001 - any failure to reach the database means no audit
        db.session.rollback()
        return {"status": "skipped", "note": f"no database access ({error.__class__.__name__})"}
    return {"status": "failed" if breaches else "passed", "breaches": breaches}


@click.command("simulate")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True, help="The running server.")
@click.option("--scenario", help="Take the crowd (and product) from seeds/SCENARIO.yaml.")
@click.option("--product", help="Product slug (default: the scenario crowd's product).")
@click.option("--buyers", type=int, help="How many distinct buyers.")
@click.option("--arrival", type=click.Choice(["burst", "ramp"]), help="All at once, or spread out.")
@click.option("--ramp-seconds", type=float, help="Spread arrivals over this many seconds (ramp).")
@click.option("--quantity", type=int, help="Units each buyer asks for.")
@click.option("--confirm-share", type=float, help="Share of winners who confirm.")
@click.option("--abandon-share", type=float, help="Share of winners who let the hold lapse.")
@click.option("--release-share", type=float, help="Share of winners who release the hold.")
@click.option("--retry-share", type=float, help="Share of buyers who retry a 503/429 after Retry-After.")
@click.option("--max-retries", type=int, help="Retries per retrying buyer (default 3).")
@click.option("--concurrency", type=int, default=256, show_default=True,
              help="Requests in flight at most (latency is timed from sending, not from queueing).")
@click.option("--settle-seconds", type=float, default=30, show_default=True,
              help="How long to wait for the worker to decide confirmations.")
@click.option("--wait-expiry", is_flag=True, help="Also wait for abandoned holds to expire.")
@click.option("--reseed", is_flag=True,
              help="Start the scenario's sale over first, as `flask seed SCENARIO --reset --delete-paid-orders`: "
                   "its holds and orders are deleted, paid ones too, since a simulation confirms holds "
                   "(needs the server's DATABASE_URL; never point it at a live shop).")
@click.option("--seed", "rng_seed", type=int, help="Random seed for reproducible plans.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_appcontext
def simulate_command(url, scenario, product, buyers, arrival, ramp_seconds, quantity, confirm_share,
                     abandon_share, release_share, retry_share, max_retries, concurrency, settle_seconds,
                     wait_expiry, reseed, rng_seed, as_json):
    """Fire a crowd of buyers at a running server and report what they got (exit 1 on oversell)."""
    url = url.rstrip("/")
    spec = {}
    if scenario:
        from .seeding import load_scenario

        try:
            loaded = load_scenario(scenario)
        except LookupError as error:
            raise click.ClickException(str(error)) from None
        spec = dict(loaded.crowd) or {}
        spec.setdefault("product", loaded.products[0]["slug"])
        if reseed:
            _reseed(loaded)
    elif reseed:
        raise click.UsageError("--reseed needs --scenario")
    if not (product or spec.get("product")):
        raise click.UsageError("give --scenario NAME or --product SLUG")
    try:
        crowd = Crowd.from_spec(spec, product=product, buyers=buyers, arrival=arrival,
                                ramp_seconds=ramp_seconds, quantity=quantity, confirm_share=confirm_share,
                                abandon_share=abandon_share, release_share=release_share,
                                retry_share=retry_share, max_retries=max_retries)
    except (TypeError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    report = asyncio.run(_simulate(url, crowd, random.Random(rng_seed), concurrency, settle_seconds,
                                   wait_expiry, reseeded=bool(scenario and reseed)))
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
    if not report["ok"]:
        sys.exit(1)


def _reseed(loaded):
    """Start the scenario's sale over, paid orders included: the previous simulation confirmed some."""
    from flask import current_app

    from .extensions import db, redis_store
    from .gateways import forget_demo_charges
    from .seeding import reset

    report = reset(db.session, redis_store.client, loaded, delete_paid=True)
    forget_demo_charges(current_app.config, redis_store.client, report.payment_keys)
    for item in report.products:
        click.echo(f"reseeded {item.product.slug}: {item.product.total_stock} units (deleted {item.holds} holds, "
                   f"{item.paid} paid, and {item.payments} payments)", err=True)
    # End the transaction those reads began: on SQLite it holds the writer lock the server needs.
    db.session.remove()


async def _simulate(url, crowd, rng, concurrency, settle_seconds, wait_expiry, reseeded=False):
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
    audit_result = audit_here(crowd.product, list(holds))
    report = build_report(crowd, url, results, before, after, holds, read_at, elapsed, audit_result)
    report["undecided_after_settle"] = undecided
    if before.get("waiting_room"):
        report["waiting_room"] = line_report(results, before["sale_starts_at"], percentile)
    return report
