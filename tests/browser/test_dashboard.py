"""The admin dashboard in a real browser: numbers and charts change within one poll after purchases."""

import re
import subprocess

from playwright.sync_api import expect
from sqlalchemy import update

from flashsale.extensions import db
from flashsale.models import Product
from tests.live_server import BIN, ROOT

from .conftest import ADMIN_TOKEN

CHART_STATE = """() => {
  const sum = (id, label) => Chart.getChart(id).data.datasets.find(d => d.label === label).data
    .reduce((a, b) => a + (b || 0), 0);
  const stock = Chart.getChart("chart-stock").data.datasets[0];
  const points = stock ? stock.data.filter(v => v !== null) : [];
  return {created: sum("chart-outcomes", "Created"), stock: points[points.length - 1]};
}"""


def test_dashboard_numbers_and_charts_change_within_one_poll(live, page, make_product):
    make_product(total_stock=20, max_per_customer=1)
    page.goto(f"{live.url}/admin/?token={ADMIN_TOKEN}")
    dashboard = page.locator("[data-dashboard]")
    expect(dashboard).not_to_have_attribute("data-polls", "0")  # the first poll carried the token
    expect(page.locator('[data-metric="totals.created"]')).to_have_text("0")
    before = page.evaluate(CHART_STATE)
    assert before == {"created": 0, "stock": 20}
    polls = int(dashboard.get_attribute("data-polls"))

    for i in range(3):
        response = page.request.post(f"{live.url}/api/products/ps5/holds", data={"email": f"b{i}@example.com"})
        assert response.status == 201

    # One poll interval is 5 s: allow it plus the time the poll itself takes on a busy CI machine.
    expect(page.locator('[data-metric="totals.created"]')).to_have_text("3", timeout=8_000)
    assert int(dashboard.get_attribute("data-polls")) > polls
    expect(page.locator('[data-product-row="ps5"] [data-col="available"]')).to_have_text("17")
    expect(page.locator('[data-product-row="ps5"] [data-col="held"]')).to_have_text("3")
    after = page.evaluate(CHART_STATE)
    assert after == {"created": 3, "stock": 17}
    expect(page.locator("[data-recent] tr").first).to_contain_text("***@example.com")
    assert "b0@example.com" not in page.content()
    expect(page.locator("[data-poll-error]")).to_be_hidden()


def test_dashboard_and_metrics_without_the_token_are_not_found(live, page):
    assert page.request.get(f"{live.url}/admin/").status == 404
    assert page.request.get(f"{live.url}/admin/metrics?token=wrong").status == 404


def test_the_last_audit_shows_within_one_poll_and_a_failed_one_raises_the_alarm(app, live, page, make_product):
    make_product(total_stock=2, max_per_customer=1)
    page.goto(f"{live.url}/admin/?token={ADMIN_TOKEN}")
    result, tile = page.locator("[data-audit-result]"), page.locator("[data-audit-tile]")
    expect(result).to_have_text("not run yet")

    assert flask_audit(live).returncode == 0
    expect(result).to_have_text("passed", timeout=8_000)  # one 5 s poll, on a busy machine
    expect(page.locator("[data-audit-detail]")).to_contain_text("all sales at")
    expect(tile).not_to_have_class(re.compile(r"\balarm\b"))

    for i in range(2):
        assert page.request.post(f"{live.url}/api/products/ps5/holds", data={"email": f"a{i}@example.com"}).ok
    with app.app_context():
        db.session.execute(update(Product).values(total_stock=1))  # an oversell, planted
        db.session.commit()
        db.session.remove()
    assert flask_audit(live).returncode == 1
    expect(result).to_have_text("FAILED", timeout=8_000)
    expect(tile).to_have_class(re.compile(r"\balarm\b"))
    expect(page.locator('[data-metric="audit.breaches"]')).to_have_text("1")
    expect(page.locator("[data-audit-detail]")).to_contain_text("breaches: 1 no oversell 1")


def flask_audit(live):
    """`flask audit` against the live server's database and Redis, as cron would run it."""
    return subprocess.run([str(BIN / "flask"), "--app", "app", "audit"], cwd=ROOT, env=live.env,
                          capture_output=True, text=True, timeout=120)
