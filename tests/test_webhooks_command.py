"""`flask webhooks status|retry`, and WEBHOOK_URLS / WEBHOOK_SECRET checked when the app starts."""

import subprocess
import sys

import pytest

from config import TestConfig
from flashsale import create_app
from flashsale.models import WebhookDelivery
from flashsale.worker import webhooks
from flashsale.worker.webhook_settings import WebhookSettingsInvalid
from tests.live_server import ROOT, server_env
from tests.paying import confirm_and_pay
from tests.shop import turn_back
from tests.webhook_receiver import SECRET, Receiver


@pytest.fixture
def endpoint(app, monkeypatch):
    with Receiver(status=503) as receiver:
        monkeypatch.setitem(app.config, "WEBHOOK_ENDPOINTS", (receiver.url,))
        monkeypatch.setitem(app.config, "WEBHOOK_SECRET", SECRET)
        yield receiver


@pytest.fixture
def flask_webhooks(app, ctx):
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=["webhooks", *args])


def test_status_counts_per_endpoint_and_retry_sends_the_failed_ones_now(flask_webhooks, session, redis, shop,
                                                                       make_product, endpoint):
    make_product(total_stock=5)
    first, second = shop.place("a@x.io").id, shop.place("b@x.io").id
    confirm_and_pay(session, redis, first)
    endpoint.status = 200
    webhooks.deliver_webhooks()  # the first is delivered
    endpoint.status = 503
    confirm_and_pay(session, redis, second)
    webhooks.deliver_webhooks()  # the second fails, and waits for its retry
    turn_back(session, [WebhookDelivery.created_at], WebhookDelivery.state == "pending", 90)
    session.commit()
    result = flask_webhooks("status")
    assert result.exit_code == 0, result.output
    assert (f"{endpoint.url}: pending 1 (failing 1), failed 0, delivered 1, oldest undelivered "
            in result.output)
    endpoint.status = 204
    result = flask_webhooks("retry")
    assert result.exit_code == 0, result.output
    assert "1 deliveries due again; 1 attempts made now" in result.output
    assert "pending 0 (failing 0), failed 0, delivered 2, oldest undelivered -" in result.output
    assert [event["data"]["id"] for _, event in endpoint.verified(accepted_only=True)] == [first, second]


def test_retry_refuses_an_endpoint_that_is_not_configured(flask_webhooks, endpoint):
    result = flask_webhooks("retry", "--endpoint", "https://elsewhere.example/hooks")
    assert result.exit_code == 2 and "is not one of WEBHOOK_URLS" in result.output


def test_status_without_endpoints_says_how_to_set_them(flask_webhooks):
    result = flask_webhooks("status")
    assert result.exit_code == 0 and "set WEBHOOK_URLS and WEBHOOK_SECRET" in result.output


@pytest.mark.parametrize("settings, named", [
    ({"WEBHOOK_URLS": "shop.example/hooks", "WEBHOOK_SECRET": SECRET}, "WEBHOOK_URLS: 'shop.example/hooks'"),
    ({"WEBHOOK_URLS": "https://a.example/h, ftp://b.example/h", "WEBHOOK_SECRET": SECRET}, "WEBHOOK_URLS"),
    ({"WEBHOOK_URLS": "https://shop.example/hooks"}, "WEBHOOK_SECRET is not"),
    ({"WEBHOOK_URLS": "https://shop.example/hooks", "WEBHOOK_SECRET": "hunter2"}, "WEBHOOK_SECRET must be"),
    ({"WEBHOOK_SECRET": "whsec_not base64!"}, "WEBHOOK_SECRET: the part after whsec_ is not valid base64"),
    ({"WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "WEBHOOK_SECRET is too short"),
])
def test_a_malformed_setting_stops_the_app_naming_it(settings, named):
    with pytest.raises(WebhookSettingsInvalid, match=named.replace("(", r"\(")):
        create_app(TestConfig, **settings)


def test_good_settings_give_the_endpoints_in_order():
    app = create_app(TestConfig, WEBHOOK_URLS=" https://a.example/h ,http://b.example:8080/x,",
                     WEBHOOK_SECRET=SECRET)
    assert app.config["WEBHOOK_ENDPOINTS"] == ("https://a.example/h", "http://b.example:8080/x")


def test_the_process_will_not_start_with_a_malformed_secret():
    env = server_env(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL,
                     WEBHOOK_URLS="https://shop.example/hooks", WEBHOOK_SECRET="not-a-secret")
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "webhooks", "status"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "WEBHOOK_SECRET must be" in done.stderr


def test_an_endpoint_removed_from_the_settings_gets_nothing_more_and_status_says_so(
        app, flask_webhooks, session, redis, shop, make_product, endpoint, monkeypatch):
    make_product()
    confirm_and_pay(session, redis, shop.place().id)
    webhooks.deliver_webhooks()  # it fails (503) and waits for its retry
    turn_back(session, [WebhookDelivery.next_attempt_at], WebhookDelivery.id > 0, 3600)
    session.commit()
    endpoint.status = 200
    monkeypatch.setitem(app.config, "WEBHOOK_ENDPOINTS", ("https://new.example/hooks",))
    assert webhooks.deliver_webhooks() == 0 and len(endpoint.posts()) == 1
    result = flask_webhooks("status")
    assert f"{endpoint.url}: pending 1 (failing 1)" in result.output
    assert "(no longer in WEBHOOK_URLS)" in result.output
    assert "https://new.example/hooks: nothing owed yet" in result.output
