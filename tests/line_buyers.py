"""A buyer queued in the line at a product's lock, and a test taking its request as a holder would."""

import threading

from flashsale import keys
from flashsale.errors import LockBusy
from flashsale.extensions import db, redis_store
from flashsale.inventory import batches, holds
from tests.live_server import wait_until


def buyer_in_line_behind(app, slug, policy, outcome, email="late@x.io"):
    """Start a buyer thread that joins the line behind a lock the test holds; returns the thread.

    outcome["placed"] gets its PlaceResult, or outcome["refused"] its LockBusy.
    """

    def buy():
        with app.app_context():
            try:
                outcome["placed"] = holds.place_hold(db.session, redis_store.client, slug, email, 1, policy)
            except LockBusy as busy:
                outcome["refused"] = busy
            finally:
                db.session.remove()

    thread = threading.Thread(target=buy)
    thread.start()
    return thread


def take_the_line(redis, product_id):
    """Pop the first request waiting in the product's line (waiting for it to arrive), decoded."""
    raw = wait_until(lambda: redis.lpop(keys.batch_queue(product_id)), 5, interval=0.002,
                     message="the buyer to join the line")
    return batches.Request.decode(raw)
