"""`flask audit` on the command line: its scope options refuse bad input, it prints a bounded sample with
the whole count, and its result reaches the admin dashboard."""

import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, update

from flashsale import keys
from flashsale.inventory import holds
from flashsale.models import InventoryEvent, Product


@pytest.fixture
def flask_audit(app, ctx):
    """Run `flask audit ARGS...` in-process (in an app context, as `flask` gives it); the click Result."""
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=["audit", *args])


def place(session, redis, policy, email, slug="ps5"):
    return holds.place_hold(session, redis, slug, email, 1, policy).hold.id


IN_AN_HOUR = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "is neither an ISO 8601 time"),
    (["--since", "0m"], "is no time ago"),
    (["--until", "15x"], "is neither an ISO 8601 time"),
    (["--since", "1h", "--until", "2h"], "must be before --until"),
    (["--since", IN_AN_HOUR], "is in the future"),
    (["--product", "nope"], "no product with slug nope"),
    (["--sample", "0"], "0 is not in the range"),
])
def test_bad_input_is_a_message_and_exit_2_and_records_nothing(flask_audit, redis, make_product, args, message):
    make_product()
    result = flask_audit(*args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert redis.get(keys.last_audit()) is None


def test_durations_and_iso_times_are_both_accepted(flask_audit, make_product):
    make_product()
    an_hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    for args in (["--since", "1h30m"], ["--since", an_hour_ago, "--until", "1s"], ["--product", "ps5"]):
        result = flask_audit(*args)
        assert result.exit_code == 0 and "audit passed" in result.output, (args, result.output)
    assert "ps5, holds placed since" in flask_audit("--product", "ps5", "--since", "2h").output


def test_a_passing_audit_is_kept_for_the_dashboard(flask_audit, client, session, redis, make_product, policy):
    make_product()
    place(session, redis, policy, "a@x.io")
    assert client.get("/admin/metrics").json["audit"] is None
    assert "not run yet" in client.get("/admin/").get_data(as_text=True)
    result = flask_audit()
    assert result.exit_code == 0 and result.output.startswith("audit passed at "), result.output
    shown = client.get("/admin/metrics").json["audit"]
    assert shown["passed"] is True and shown["breaches"] == 0 and shown["scope"] == "all sales"
    assert shown["by_invariant"]["1 no oversell"] == 0 and 0 <= shown["age_seconds"] < 60
    page = client.get("/admin/").get_data(as_text=True)
    assert re.search(r"data-audit-result>passed<", page) and "alarm\" data-audit-tile" not in page


def test_a_failing_audit_prints_a_sample_counts_all_and_raises_the_dashboards_alarm(
        flask_audit, client, session, redis, make_product, policy):
    make_product(total_stock=20)
    for n in range(12):
        place(session, redis, policy, f"c{n}@x.io")
    session.execute(delete(InventoryEvent))
    session.execute(update(Product).values(total_stock=5))
    session.commit()
    result = flask_audit("--sample", "3")
    assert result.exit_code == 1
    assert len(re.findall(r"BREACH \[8 nothing half-done\] ", result.output)) == 3
    assert "... and 9 more found by holds_without_one_creation" in result.output
    assert "BREACH [1 no oversell] ps5: 12 units taken of 5" in result.output
    assert re.search(r"audit failed at .*: 14 breaches \(1 no oversell: 1, 8 nothing half-done: 12, "
                     r"4 ledger balance: 1\)", result.output), result.output
    shown = client.get("/admin/metrics").json["audit"]
    assert (shown["passed"], shown["breaches"]) == (False, 14)
    page = client.get("/admin/").get_data(as_text=True)
    assert 'class="tile alarm" data-audit-tile' in page and "data-audit-result>FAILED<" in page
    assert "8 nothing half-done 12" in page
    for hold_id in re.findall(r"BREACH \[8 nothing half-done\] (\S+):", result.output):
        assert hold_id not in page  # hold ids are capabilities: the dashboard shows counts only
