"""Done when (issue 21): a real endpoint answering 503 for a while, the worker SIGKILLed mid-delivery and
Redis's queue lost meanwhile, still gets every order.confirmed once it is back, each verifying with the
standardwebhooks library under one webhook-id per order; released and expired holds are never announced.
"""

import signal
from collections import defaultdict

import redis as redis_lib
from sqlalchemy import func, select

from config import TestConfig
from flashsale.extensions import db
from flashsale.models import WebhookDelivery
from tests.faults import DATABASE_URL, assert_audit_passes, burst, call
from tests.live_server import LiveServer, stop_process, wait_until
from tests.webhook_receiver import SECRET, Receiver


def delivery_states(app):
    with app.app_context():
        found = dict(db.session.execute(select(WebhookDelivery.state, func.count())
                                        .group_by(WebhookDelivery.state)).all())
        db.session.remove()
    return found


def test_every_confirmed_order_reaches_an_endpoint_that_was_down_through_a_killed_worker(app, shop,
                                                                                          make_product):
    make_product(slug="drop", total_stock=20, max_per_customer=1)
    with Receiver(status=503, delay=0.3) as endpoint, LiveServer(
            DATABASE_URL, TestConfig.REDIS_URL, workers=1, threads=8, with_worker=True, HOLD_SECONDS=60,
            SWEEP_SECONDS=1, WEBHOOK_URLS=endpoint.url, WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_FIRST_SECONDS=1,
            WEBHOOK_RETRY_CAP_SECONDS=2, WEBHOOK_LEASE_SECONDS=3, WEBHOOK_TIMEOUT_SECONDS=2) as server:
        placed = burst(server.url, "drop", [f"b{i}@x.io" for i in range(12)], concurrency=6)
        assert [answer.status for answer in placed] == [201] * 12, [answer.body for answer in placed]
        ids = [answer.body["id"] for answer in placed]
        confirmed, released, lapsed = ids[:8], ids[8:10], ids[10:12]
        for hold_id in confirmed:
            assert call(f"{server.url}/api/holds/{hold_id}/confirm", "POST").status == 202
        for hold_id in released:
            assert call(f"{server.url}/api/holds/{hold_id}/release", "POST").status == 200
        shop.lapse(*lapsed)
        wait_until(lambda: set(shop.statuses(confirmed).values()) == {"CONFIRMED"}
                   and set(shop.statuses(lapsed).values()) == {"EXPIRED"}, 30, message="the sale to settle")
        # The endpoint is down (503) and slow: kill the worker while it is in the middle of a delivery.
        wait_until(lambda: len(endpoint.posts()) >= 3 and endpoint.in_flight > 0, 30, interval=0.01,
                   message="a delivery in flight after failed ones")
        stop_process(server.worker, signal.SIGKILL)
        failed_before = len(endpoint.posts())
        # Redis restarts without the queue: every RQ job and schedule is gone (the rest of Redis is kept;
        # the fake gateway's records of the charges are in the database, where the audit reads them).
        redis = redis_lib.Redis.from_url(TestConfig.REDIS_URL)
        lost = [key for key in redis.scan_iter("rq:*")]
        assert lost and redis.delete(*lost)
        endpoint.status, endpoint.delay = 200, 0.0
        server.start_worker()
        wait_until(lambda: delivery_states(app) == {"delivered": 8}, 60, interval=0.2,
                   message="every order.confirmed delivered")

    accepted = endpoint.verified(SECRET, accepted_only=True)  # each verifies, or this raises
    every = endpoint.verified(SECRET)
    assert failed_before >= 3 and len(every) > len(accepted)  # some were retried
    ids_per_order = defaultdict(set)
    for webhook_id, event in every:
        assert event["type"] == "order.confirmed"
        ids_per_order[event["data"]["id"]].add(webhook_id)
    assert set(ids_per_order) == set(confirmed)  # neither the released nor the lapsed holds
    assert all(len(webhook_ids) == 1 for webhook_ids in ids_per_order.values())  # one id per order
    assert {event["data"]["id"] for _, event in accepted} == set(confirmed)
    emails = {answer.body["id"]: answer.body["email"] for answer in placed}
    assert sorted(event["data"]["email"] for _, event in accepted) == sorted(emails[h] for h in confirmed)
    assert_audit_passes(app)
