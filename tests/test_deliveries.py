"""Delivering the outbox: signed, retried on schedule, per hold in order, nothing lost to a lease."""

import json
import random

import pytest
from sqlalchemy import select

from flashsale.inventory import deliveries, outbox
from flashsale.inventory.deliveries import RetrySchedule
from flashsale.models import WebhookDelivery
from flashsale.worker import webhooks
from tests.paying import confirm_and_pay
from tests.shop import turn_back
from tests.webhook_receiver import SECRET, Receiver

FAST = RetrySchedule(first_seconds=10, cap_seconds=3600, give_up_seconds=25 * 3600, lease_seconds=60)


@pytest.fixture
def endpoint(app, monkeypatch):
    """A receiver the app delivers to (WEBHOOK_URLS set for this test only)."""
    with Receiver() as receiver:
        monkeypatch.setitem(app.config, "WEBHOOK_ENDPOINTS", (receiver.url,))
        monkeypatch.setitem(app.config, "WEBHOOK_SECRET", SECRET)
        yield receiver


def rows(session):
    found = session.execute(select(WebhookDelivery.state, WebhookDelivery.attempts, WebhookDelivery.failures)
                            .order_by(WebhookDelivery.id)).all()
    session.commit()
    return [tuple(row) for row in found]


def test_the_schedule_retries_within_30_s_then_backs_off_to_an_hour_for_over_24_hours():
    schedule = RetrySchedule()
    assert all(schedule.delay(1, lambda r=r: r) <= 10 for r in (0.0, 0.5, 0.999))
    lows = [schedule.delay(n, lambda: 0.0) for n in range(1, 40)]
    highs = [schedule.delay(n, lambda: 0.999999) for n in range(1, 40)]
    assert lows == sorted(lows) and max(highs) <= 3600 and highs[-1] > 3590
    jittered = {round(schedule.delay(6, random.random), 3) for _ in range(20)}
    assert len(jittered) > 10  # not every delivery comes back at the same instant
    # Failing at the longest delays, the retries alone span more than a day before it gives up.
    assert schedule.give_up_seconds >= 24 * 3600


def test_a_confirmed_order_is_delivered_signed_once_per_endpoint(session, redis, shop, make_product, endpoint):
    make_product()
    hold_id = shop.place("buyer@x.io").id
    confirm_and_pay(session, redis, hold_id)
    assert webhooks.deliver_webhooks() == 1
    [(webhook_id, event)] = endpoint.verified()
    assert event["type"] == "order.confirmed" and event["data"]["id"] == hold_id
    assert event["data"]["email"] == "buyer@x.io" and webhook_id.startswith("msg_")
    assert webhooks.deliver_webhooks() == 0 and rows(session) == [("delivered", 1, 0)]


def test_a_failing_endpoint_is_retried_with_the_same_id_and_body_then_delivered(session, redis, shop,
                                                                                make_product, endpoint):
    make_product()
    confirm_and_pay(session, redis, shop.place().id)
    endpoint.status = 503
    assert webhooks.deliver_webhooks() == 1
    assert webhooks.deliver_webhooks() == 0  # not due again yet: the first retry is up to 10 s away
    [(state, attempts, failures)] = rows(session)
    assert (state, attempts, failures) == ("pending", 1, 1)
    turn_back(session, [WebhookDelivery.next_attempt_at], WebhookDelivery.id > 0, 11)
    session.commit()
    endpoint.status = 204
    assert webhooks.deliver_webhooks() == 1
    first, second = endpoint.posts()
    assert first[0]["webhook-id"] == second[0]["webhook-id"] and first[1] == second[1]
    assert len({webhook_id for webhook_id, _ in endpoint.verified()}) == 1
    assert rows(session) == [("delivered", 2, 1)]


def test_a_hold_s_later_event_waits_for_its_earlier_one_at_that_endpoint(session, redis, shop, make_product,
                                                                        endpoint):
    make_product(total_stock=5)
    first, other = shop.place("first@x.io").id, shop.place("other@x.io").id
    confirm_and_pay(session, redis, first)
    outbox.order_refunded(session, first)  # a second event of the same hold (staged)
    session.commit()
    confirm_and_pay(session, redis, other)
    endpoint.status = 503
    webhooks.deliver_webhooks()
    # The first hold's confirmation failed, so its refund waits; the other hold is not held up.
    attempted = [json.loads(body)["data"]["id"] + " " + json.loads(body)["type"] for _, body in endpoint.posts()]
    # (Deliveries go out on several threads: two holds' events may arrive in either order.)
    assert sorted(attempted) == sorted([f"{first} order.confirmed", f"{other} order.confirmed"])
    endpoint.status = 200
    turn_back(session, [WebhookDelivery.next_attempt_at], WebhookDelivery.id > 0, 3600)
    session.commit()
    webhooks.deliver_webhooks()
    kinds = [(event["data"]["id"], event["type"]) for _, event in endpoint.verified()[2:]]
    assert kinds.index((first, "order.confirmed")) < kinds.index((first, "order.refunded"))


def test_a_taken_delivery_is_due_again_only_when_its_lease_runs_out(session, redis, shop, make_product,
                                                                   endpoint):
    make_product()
    confirm_and_pay(session, redis, shop.place().id)
    deliveries.fan_out(session, [endpoint.url])
    [taken] = deliveries.take_due(session, FAST)  # a worker takes it, then dies before answering
    assert deliveries.take_due(session, FAST) == []
    turn_back(session, [WebhookDelivery.next_attempt_at], WebhookDelivery.id > 0, 61)
    session.commit()
    [again] = deliveries.take_due(session, FAST)
    assert (again.webhook_id, again.attempt) == (taken.webhook_id, 2)
    assert deliveries.record_failed(session, taken, "late answer of the dead attempt", FAST) is None
    deliveries.record_delivered(session, again)
    assert rows(session) == [("delivered", 2, 0)]


def test_a_delivery_failing_for_more_than_a_day_is_failed_and_retry_sends_it_again(session, redis, shop,
                                                                                  make_product, endpoint):
    make_product()
    confirm_and_pay(session, redis, shop.place().id)
    endpoint.status = 500
    webhooks.deliver_webhooks()
    turn_back(session, [WebhookDelivery.next_attempt_at, WebhookDelivery.created_at], WebhookDelivery.id > 0,
              23 * 3600)
    session.commit()
    webhooks.deliver_webhooks()
    assert rows(session)[0][0] == "pending"  # 23 h: still retrying
    turn_back(session, [WebhookDelivery.next_attempt_at, WebhookDelivery.created_at], WebhookDelivery.id > 0,
              2 * 3600)
    session.commit()
    webhooks.deliver_webhooks()
    assert rows(session) == [("failed", 3, 3)]
    [status] = deliveries.status(session)
    assert (status.pending, status.failing, status.failed, status.delivered) == (0, 0, 1, 0)
    assert status.oldest_undelivered_seconds >= 0
    endpoint.status = 200
    assert deliveries.retry(session) == 1
    webhooks.deliver_webhooks()
    assert rows(session) == [("delivered", 4, 0)]


def test_events_written_with_no_endpoint_wait_for_one(session, redis, shop, make_product, app, monkeypatch):
    make_product()
    confirm_and_pay(session, redis, shop.place().id)
    monkeypatch.setitem(app.config, "WEBHOOK_ENDPOINTS", ())
    assert webhooks.deliver_webhooks() == 0 and deliveries.unfanned(session) == 1
    with Receiver() as late:
        monkeypatch.setitem(app.config, "WEBHOOK_ENDPOINTS", (late.url,))
        monkeypatch.setitem(app.config, "WEBHOOK_SECRET", SECRET)
        assert webhooks.deliver_webhooks() == 1 and len(late.verified()) == 1


def test_an_endpoint_that_does_not_answer_in_time_counts_as_failed(session, redis, shop, make_product,
                                                                   endpoint, app, monkeypatch):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hooks"
        monkeypatch.setitem(app.config, "WEBHOOK_ENDPOINTS", (url,))
        monkeypatch.setitem(app.config, "WEBHOOK_TIMEOUT_SECONDS", 0.5)
        make_product()
        confirm_and_pay(session, redis, shop.place().id)
        assert webhooks.deliver_webhooks() == 1
        assert rows(session) == [("pending", 1, 1)]
        error = session.execute(select(WebhookDelivery.last_error)).scalar_one()
        assert "timed out" in error.lower() or "timeout" in error.lower()
    finally:
        silent.close()


def test_the_dashboard_shows_deliveries_pending_and_failing(app, session, redis, shop, make_product, endpoint):
    make_product(total_stock=5)
    for email in ("a@x.io", "b@x.io", "c@x.io"):
        confirm_and_pay(session, redis, shop.place(email).id)
    deliveries.fan_out(session, [endpoint.url])
    endpoint.status = 503
    [attempt] = deliveries.take_due(session, FAST, limit=1)
    deliveries.record_failed(session, attempt, "HTTP 503", FAST)
    client = app.test_client()
    board = client.get("/admin/metrics").json["webhooks"]
    assert (board["pending"], board["failing"], board["failed"]) == (3, 1, 0)
    assert board["oldest_seconds"] is not None and board["oldest_seconds"] >= 0
    page = client.get("/admin/").get_data(as_text=True)
    assert 'data-metric="webhooks.pending">3<' in page and 'data-metric="webhooks.failing">1<' in page


def test_a_redirect_is_not_a_delivery(session, redis, shop, make_product, endpoint):
    make_product()
    confirm_and_pay(session, redis, shop.place().id)
    endpoint.status = 302  # urllib would follow it with a GET and count that answer's 200
    assert webhooks.deliver_webhooks() == 1
    assert rows(session) == [("pending", 1, 1)] and len(endpoint.posts()) == 1
    error = session.execute(select(WebhookDelivery.last_error)).scalar_one()
    session.commit()
    assert error == "HTTP 302"
