"""`flask simulate`: its pure parts on made-up answers, and its report against a live server's database."""

import asyncio
import json
import random
import re
import subprocess
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from config import TestConfig
from flashsale.extensions import db
from flashsale.metrics import percentile
from flashsale.models import Order
from flashsale.simulate.driver import Attempt, BuyerResult, play
from flashsale.simulate.plans import Buyer, Crowd, plan_buyers, retry_after_seconds
from flashsale.simulate.report import build_report, confirmation_report, kept_units, render, time_to_sell_out
from tests.live_server import BIN, ROOT, LiveServer, server_env

# Far enough ahead that no hold in these reports lapses while a test runs; built from the clock now.
LATER = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat().replace("+00:00", "Z")

HOLD_SECONDS = 5


# --- pure parts ---------------------------------------------------------------------------------------

def test_percentiles_use_the_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_buyers_are_distinct_and_follow_the_shares_and_the_ramp():
    crowd = Crowd(product="ps5", buyers=2000, arrival="ramp", ramp_seconds=10, confirm_share=0.5,
                  abandon_share=0.3, release_share=0.2, retry_share=0.25)
    buyers = plan_buyers(crowd, random.Random(1), "run")
    assert len({b.email for b in buyers}) == 2000
    assert buyers[0].arrives_at == 0 and buyers[-1].arrives_at == pytest.approx(9.995)
    assert all(a.arrives_at <= b.arrives_at for a, b in zip(buyers, buyers[1:], strict=False))
    plans = Counter(b.plan for b in buyers)
    assert plans["confirm"] == pytest.approx(1000, abs=100)
    assert plans["abandon"] == pytest.approx(600, abs=100)
    assert plans["release"] == pytest.approx(400, abs=100)
    assert sum(b.retries for b in buyers) == pytest.approx(500, abs=80)
    burst = plan_buyers(Crowd(product="ps5", buyers=10), random.Random(1), "run")
    assert {b.arrives_at for b in burst} == {0.0}


def test_a_crowd_takes_the_scenario_block_and_lets_options_override_it():
    crowd = Crowd.from_spec({"product": "ps5", "buyers": 5000, "arrival": "burst", "unknown": 1},
                            buyers=300, arrival=None)
    assert (crowd.product, crowd.buyers, crowd.arrival) == ("ps5", 300, "burst")
    with pytest.raises(ValueError):
        Crowd.from_spec({"product": "ps5", "arrival": "stampede"})


def test_retry_after_is_read_as_seconds_with_a_fallback_and_a_cap():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(None) == 1.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 1.0
    assert retry_after_seconds("3600") == 30.0


def _result(i, status, code=None, at=0.1, latency=10.0, plan="confirm", quantity=1, hold_status="PENDING"):
    result = BuyerResult(Buyer(i, f"b{i}@example.com", 0.0, plan, False),
                         [Attempt(status, code, latency, at)])
    if status == 201:
        result.hold = {"id": f"h{i}", "quantity": quantity, "status": hold_status,
                       "hold_expires_at": LATER}
    return result


def test_sell_out_time_is_when_the_starting_stock_was_all_held():
    results = [_result(1, 201, at=0.3), _result(2, 201, at=0.1), _result(3, 409, "sold_out", at=0.2)]
    assert time_to_sell_out(results, 2) == 0.3
    assert time_to_sell_out(results, 3) is None


def test_expired_and_nearly_expired_pending_holds_are_not_counted_as_kept():
    now = datetime.now(timezone.utc)
    later = (now + timedelta(minutes=1)).isoformat()
    holds = {
        "a": {"status": "CONFIRMED", "quantity": 2, "hold_expires_at": now.isoformat()},
        "b": {"status": "PENDING", "quantity": 1, "hold_expires_at": later},
        "c": {"status": "PENDING", "quantity": 1, "hold_expires_at": (now + timedelta(seconds=1)).isoformat()},
        "d": {"status": "RELEASED", "quantity": 1, "hold_expires_at": later},
    }
    assert kept_units(holds, now) == 3


def _report(available_after, holds):
    crowd = Crowd(product="ps5", buyers=3)
    results = [_result(1, 201, latency=5), _result(2, 201, latency=7), _result(3, 409, "sold_out", latency=1)]
    before = {"total_stock": 2, "available": 2}
    after = {"total_stock": 2, "available": available_after}
    return build_report(crowd, "http://x", results, before, after, holds,
                        datetime.now(timezone.utc), 0.5, {"status": "skipped", "note": "n"})


def test_the_report_counts_answers_and_passes_when_nothing_is_oversold():
    holds = {"h1": {"status": "CONFIRMED", "quantity": 1, "hold_expires_at": LATER},
             "h2": {"status": "RELEASED", "quantity": 1, "hold_expires_at": LATER}}
    report = _report(1, holds)
    assert report["responses"] == {"201 created": 2, "409 sold_out": 1}
    assert report["answers"] == {"won": 2, "sold_out": 1}
    assert report["outcomes"] == {"confirmed": 1, "confirming": 0, "expired": 0, "released": 1, "pending": 0}
    assert report["latency_ms"]["p50"] == 5 and report["latency_ms"]["max"] == 7
    assert report["ok"] is True
    table = render(report)
    assert "409 sold_out 1" in table and "p99 7" in table and "OK: nothing oversold" in table


def test_the_report_fails_when_the_api_shows_more_units_than_the_stock():
    holds = {"h1": {"status": "CONFIRMED", "quantity": 1, "hold_expires_at": LATER},
             "h2": {"status": "CONFIRMED", "quantity": 1, "hold_expires_at": LATER}}
    report = _report(1, holds)  # two confirmed and one still available, of a stock of two
    assert report["checks"]["kept_plus_available_within_stock"] is False
    assert report["ok"] is False
    assert "FAILED" in render(report)


def test_units_released_and_won_again_read_as_such_not_as_an_oversell():
    """Three holds won of a stock of two: one was released and its unit won again by a later buyer."""
    crowd = Crowd(product="ps5", buyers=3)
    results = [_result(1, 201), _result(2, 201), _result(3, 201)]
    holds = {"h1": {"status": "CONFIRMED", "quantity": 1, "hold_expires_at": LATER},
             "h2": {"status": "RELEASED", "quantity": 1, "hold_expires_at": LATER},
             "h3": {"status": "CONFIRMED", "quantity": 1, "hold_expires_at": LATER}}
    report = build_report(crowd, "http://x", results, {"total_stock": 2, "available": 2},
                          {"total_stock": 2, "available": 0}, holds, datetime.now(timezone.utc), 0.5,
                          {"status": "passed", "breaches": []})
    assert (report["units_won"], report["units_kept"], report["units_returned"], report["units_sold_again"]) \
        == (3, 2, 1, 1)
    table = render(report)
    assert "3 won by 3 holds of 2 available (stock 2): 2 kept (confirmed, paying or held), 1 came back " \
           "(released, lapsed or payment refused), 1 of them won again by later buyers" in table
    assert report["ok"] and "OK: nothing oversold" in table


def test_a_server_that_is_down_is_one_line_naming_it_and_a_failure_exit(app, tmp_path):
    """No traceback: one line with the address, and a non-zero exit."""
    from tests.live_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    env = server_env(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL)
    done = subprocess.run([str(BIN / "flask"), "--app", "app", "simulate", "--url", url, "--product", "ps5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "ClientConnectorError" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: no server answers at {url}"), done.stderr


def test_retrying_buyers_come_back_after_retry_after_with_the_same_idempotency_key():
    from aiohttp import web

    keys, actions = {}, []

    async def hold(request):
        body = await request.json()
        keys.setdefault(body["email"], []).append(request.headers["Idempotency-Key"])
        if len(keys[body["email"]]) == 1:  # everyone's first try meets a busy lock
            return web.json_response({"error": {"code": "unavailable", "message": "busy"}}, status=503,
                                     headers={"Retry-After": "0"})
        return web.json_response({"id": "h-" + body["email"], "quantity": 1, "status": "PENDING",
                                  "hold_expires_at": LATER}, status=201)

    async def act(request):
        actions.append(request.match_info["verb"])
        return web.json_response({}, status=202 if request.match_info["verb"] == "confirm" else 200)

    async def scenario():
        server = web.Application()
        server.router.add_post("/api/products/{slug}/holds", hold)
        server.router.add_post("/api/holds/{hold}/{verb}", act)
        runner = web.AppRunner(server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        crowd = Crowd(product="x", buyers=40, retry_share=0.5, confirm_share=0.5, abandon_share=0.25,
                      release_share=0.25)
        try:
            return await play(f"http://127.0.0.1:{port}", crowd, plan_buyers(crowd, random.Random(3), "t"))
        finally:
            await runner.cleanup()

    results, _ = asyncio.run(scenario())
    retriers = [r for r in results if r.buyer.retries]
    assert 0 < len(retriers) < 40
    for result in results:
        tried = keys[result.buyer.email]
        if result.buyer.retries:
            assert [a.status for a in result.attempts] == [503, 201] and result.answer == "won"
            assert len(tried) == 2 and len(set(tried)) == 1
        else:
            assert [a.status for a in result.attempts] == [503] and result.answer == "unavailable"
            assert result.hold is None and len(tried) == 1
    expected = Counter(r.buyer.plan for r in retriers if r.buyer.plan != "abandon")
    assert Counter(actions) == expected


def test_the_report_counts_confirmations_accepted_and_kept_and_the_time_to_confirm():
    now = datetime.now(timezone.utc)

    def at(seconds):
        return (now + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    results = [_result(i, 201) for i in (1, 2, 3, 4)]
    for result, action in zip(results, (202, 202, 409, 202), strict=True):
        result.action_status = action
    holds = {
        "h1": {"status": "CONFIRMED", "quantity": 1, "hold_expires_at": LATER,
               "confirmation_requested_at": at(0), "confirmed_at": at(0.25)},
        "h2": {"status": "CONFIRMED", "quantity": 1, "hold_expires_at": LATER,
               "confirmation_requested_at": at(0), "confirmed_at": at(0.75)},
        "h3": {"status": "EXPIRED", "quantity": 1, "hold_expires_at": LATER},
        "h4": {"status": "RELEASED", "quantity": 1, "hold_expires_at": LATER,
               "confirmation_requested_at": at(0)},
    }
    found = confirmation_report(results, holds)
    assert {k: v for k, v in found.items() if k != "time_to_confirm_s"} == {
        "asked": 4, "accepted": 3, "refused": 1, "kept": 2, "payment_refused_or_unfinished": 1,
        "still_paying": 0}
    assert found["time_to_confirm_s"] == {"p50": 0.25, "p99": 0.75, "max": 0.75}


def test_the_table_explains_rate_limits_and_a_missing_worker():
    holds = {"h1": {"status": "PENDING", "quantity": 1, "hold_expires_at": LATER}}
    report = _report(1, holds)
    report["responses"]["429 rate_limited"] = 3
    report["undecided_after_settle"] = 1
    table = render(report)
    assert "RATELIMIT_ENABLED=false" in table and "is a worker running" in table


# --- against a live server ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(app):
    """The web server (two processes) and a worker on the test database, with short holds to watch expiry."""
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=2, threads=16,
                    with_worker=True, HOLD_SECONDS=HOLD_SECONDS, SWEEP_SECONDS=1) as server:
        yield server


def db_statuses(app, product_id):
    with app.app_context():
        rows = db.session.execute(select(Order.status, func.count()).where(Order.product_id == product_id)
                                  .group_by(Order.status)).all()
        db.session.remove()
    return {status.lower(): count for status, count in rows}


def test_three_hundred_buyers_on_twenty_units_report_what_the_database_holds(app, live, make_product):
    product_id = make_product(slug="drop", total_stock=20)
    result = app.test_cli_runner().invoke(args=[
        "simulate", "--url", live.url, "--product", "drop", "--buyers", "300", "--confirm-share", "0.5",
        "--abandon-share", "0.3", "--release-share", "0.2", "--retry-share", "1", "--seed", "7",
        "--wait-expiry", "--settle-seconds", "30", "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    # The simulator waited (with a deadline) until the worker decided every hold; terminal states are final.
    assert report["undecided_after_settle"] == 0
    statuses = db_statuses(app, product_id)
    assert report["holds_won"] == sum(statuses.values())
    assert report["outcomes"] == {s: statuses.get(s, 0)
                                  for s in ("confirmed", "confirming", "expired", "released", "pending")}
    assert statuses.get("pending", 0) == 0 and statuses.get("confirming", 0) == 0
    # Every confirmation the server accepted was kept, and the report says how long paying took.
    confirmations = report["confirmations"]
    assert confirmations["accepted"] == confirmations["kept"] == statuses["confirmed"]
    assert confirmations["asked"] == confirmations["accepted"] + confirmations["refused"]
    assert 0 <= confirmations["time_to_confirm_s"]["p50"] <= confirmations["time_to_confirm_s"]["max"]
    assert statuses.get("confirmed", 0) > 0 and statuses.get("expired", 0) > 0
    # Every unit went, releases let a few more buyers in, and nobody got more than the stock at once.
    assert 20 <= report["holds_won"] <= 20 + statuses.get("released", 0)
    assert report["answers"]["won"] == report["holds_won"]
    assert sum(report["answers"].values()) == 300
    assert report["stock"] == {"total": 20, "available_before": 20,
                               "available_after": 20 - statuses.get("confirmed", 0)}
    assert report["units_kept"] == statuses.get("confirmed", 0)
    assert report["time_to_sell_out_s"] is not None
    assert report["time_to_sell_out_s"] <= report["time_to_all_answered_s"]
    latency = report["latency_ms"]
    assert latency["count"] == 300 + report["retries"]
    assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert report["audit"] == {"status": "passed", "breaches": []}
    assert all(report["checks"][k] for k in report["checks"] if k != "audit") and report["ok"]


def test_the_command_line_skips_the_audit_without_the_servers_database(live, make_product, tmp_path):
    make_product(slug="small", total_stock=5)
    env = server_env(f"sqlite:///{tmp_path / 'elsewhere.db'}", TestConfig.REDIS_URL)
    done = subprocess.run(
        [str(BIN / "flask"), "--app", "app", "simulate", "--url", live.url, "--product", "small",
         "--buyers", "30", "--confirm-share", "0", "--abandon-share", "1", "--release-share", "0",
         "--retry-share", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"units won +5 won by 5 holds of 5 available \(stock 5\): \d kept", done.stdout)
    assert re.search(r"answers +sold_out 25 · won 5", done.stdout)
    assert re.search(r"audit +skipped: no database access", done.stdout)
    assert "OK: nothing oversold" in done.stdout


def test_reseed_starts_the_sale_over_though_the_last_simulation_was_paid_for(app, live):
    args = ["simulate", "--url", live.url, "--scenario", "low-stock", "--reseed", "--buyers", "20",
            "--retry-share", "1", "--seed", "3", "--json"]
    first = app.test_cli_runner().invoke(args=args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["outcomes"]["confirmed"] == 3  # every winner pays: all three units sold

    second = app.test_cli_runner().invoke(args=args)
    assert second.exit_code == 0, second.output
    assert re.search(r"reseeded gold-edition: 3 units \(deleted 3 holds, 3 paid, and \d+ payments\)", second.stderr)
    report = json.loads(second.stdout)
    assert report["stock"]["available_before"] == 3 and report["outcomes"]["confirmed"] == 3
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Order)).scalar_one() == report["holds_won"]
        db.session.remove()
