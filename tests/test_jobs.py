"""The RQ jobs end to end: a real worker with the scheduler confirms, expires and sweeps holds."""

from datetime import datetime

import pytest
from sqlalchemy import update

from config import TestConfig
from flashsale.extensions import db
from flashsale.models import Order
from tests.live_server import LiveServer, wait_until


@pytest.fixture(scope="module")
def quick(app):
    """A live server whose holds last two seconds, with a worker sweeping every second."""
    with LiveServer(TestConfig.SQLALCHEMY_DATABASE_URI, TestConfig.REDIS_URL, workers=1, threads=4,
                    with_worker=True, HOLD_SECONDS=2, SWEEP_SECONDS=1) as server:
        yield server


def status_of(client, hold_id):
    return client.get(f"/api/holds/{hold_id}").json["status"]


def call(server, method, path, body=None):
    """A real HTTP request to the live server: (status, json)."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def hold_status(server, hold_id):
    return call(server, "GET", f"/api/holds/{hold_id}")[1]["status"]


def test_the_worker_confirms_a_queued_hold(quick, make_product):
    make_product(slug="confirm-me")
    status, hold = call(quick, "POST", "/api/products/confirm-me/holds", {"email": "c@x.io"})
    assert status == 201
    assert call(quick, "POST", f"/api/holds/{hold['id']}/confirm")[0] == 202
    wait_until(lambda: hold_status(quick, hold["id"]) == "CONFIRMED", 10, message="confirmation")
    assert call(quick, "POST", f"/api/holds/{hold['id']}/confirm")[0] == 200


def test_a_refused_payment_releases_the_hold_and_returns_the_stock(quick, make_product):
    make_product(slug="refuse-me", total_stock=1)
    _, hold = call(quick, "POST", "/api/products/refuse-me/holds", {"email": "d+refuse@x.io"})
    assert call(quick, "GET", "/api/products/refuse-me")[1]["available"] == 0
    call(quick, "POST", f"/api/holds/{hold['id']}/confirm")
    wait_until(lambda: hold_status(quick, hold["id"]) == "RELEASED", 10, message="release on refusal")
    assert call(quick, "GET", "/api/products/refuse-me")[1]["available"] == 1


def test_the_scheduled_expiry_job_records_a_lapsed_hold(quick, make_product):
    make_product(slug="lapse-me", total_stock=1)
    _, hold = call(quick, "POST", "/api/products/lapse-me/holds", {"email": "e@x.io"})
    assert call(quick, "POST", "/api/products/lapse-me/holds", {"email": "f@x.io"})[0] == 409
    wait_until(lambda: hold_status(quick, hold["id"]) == "EXPIRED", 10, message="expiry")
    status, _ = call(quick, "POST", f"/api/holds/{hold['id']}/confirm")
    assert status == 409
    assert call(quick, "POST", "/api/products/lapse-me/holds", {"email": "f@x.io"})[0] == 201


def test_the_sweeper_records_a_hold_whose_expiry_job_was_lost(app, quick, make_product):
    make_product(slug="lost-job", total_stock=5)
    _, hold = call(quick, "POST", "/api/products/lost-job/holds", {"email": "g@x.io"})
    with app.app_context():
        from flashsale.extensions import redis_store
        from flashsale.worker.jobs import expiry_job_of

        expires = datetime.fromisoformat(hold["hold_expires_at"].replace("Z", "+00:00"))
        job_id = expiry_job_of(expires)
        assert job_id in redis_store.queue.scheduled_job_registry.get_job_ids()
        redis_store.queue.scheduled_job_registry.remove(job_id, delete_job=True)
        # Pretend it lapsed long ago; only the sweeper can record it now.
        db.session.execute(update(Order).values(hold_expires_at=Order.created_at))
        db.session.commit()
    wait_until(lambda: hold_status(quick, hold["id"]) == "EXPIRED", 5, message="the sweeper")


def schedule_expiry(redis, hold_ids, expires):
    """Queue one batch's expiry as the line's holder does (on its pipeline, then the replies): its slot."""
    from flashsale import checkout
    from flashsale.worker.jobs import ExpirySlot

    pipe = redis.pipeline(transaction=False)
    checkout.schedule_expiry(pipe, hold_ids, expires)(pipe.execute())
    return ExpirySlot(hold_ids, expires).second


def test_batches_lapsing_in_the_same_second_share_one_expiry_job(app, make_product):
    """Every batch adds its holds to its second's slot; only the slot's first batch enqueues a job,
    and that job records every hold of the slot."""
    from datetime import timedelta

    from flashsale import keys
    from flashsale.extensions import redis_store
    from flashsale.inventory import holds
    from flashsale.worker import jobs

    make_product(slug="slots", total_stock=10, max_per_customer=10)
    with app.app_context():
        queue, redis = redis_store.queue, redis_store.client
        placed = [holds.place_hold(db.session, redis, "slots", f"s{n}@x.io", 1, holds.HoldPolicy())
                  for n in range(4)]
        hold_ids = [p.hold.id for p in placed]
        expires = db.session.get(Order, hold_ids[0]).hold_expires_at
        # Four batches lapsing within one second: one slot, one job. (Early in the second, so the four
        # instants never straddle two seconds, whatever fraction of a second the holds were placed at.)
        expires = expires.replace(microsecond=100_000)
        seconds = {schedule_expiry(redis, [hold_id], expires + timedelta(milliseconds=10 * n))
                   for n, hold_id in enumerate(hold_ids)}
        assert len(seconds) == 1
        [second] = seconds
        scheduled = [j for j in queue.scheduled_job_registry.get_job_ids() if j.startswith("expire-")]
        assert scheduled == [jobs.expiry_job_id(second)]
        assert {m.decode() for m in redis.smembers(keys.expiry_slot(second))} == set(hold_ids)
        # The job at the slot's end records them all (here run directly, after the holds lapsed).
        db.session.execute(update(Order).values(hold_expires_at=Order.created_at))
        db.session.commit()
        assert jobs.expire_slot(second) == 4
        assert jobs.expire_slot(second) == 0  # again: nothing left to do
        statuses = {o.status for o in db.session.query(Order).all()}
        assert statuses == {"EXPIRED"} and not redis.exists(keys.expiry_slot(second))
        db.session.remove()
