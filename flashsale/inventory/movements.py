"""Moving a product's stock snapshot with each committed stock movement (snapshot.py reads it).

Every movement updates the snapshot right after its commit, in the function that moved the stock: a
batch of holds adds to its expiry bucket (`move_in`, on the batch's answering pipeline), a release takes
from it, an accepted confirmation moves units from the bucket to paying, a payment from paying to
confirmed, a refused one out of paying (`move`); an expiry changes nothing (its bucket has lapsed
already); seeding drops the snapshot (`forget`). Those writes are best effort: a crash between commit
and write, a Redis error, or a movement racing a rebuild can leave the snapshot wrong until the next
rebuild, snapshot.MAX_AGE_SECONDS at most.
"""

import logging

from redis.exceptions import RedisError

from .. import keys, lua
from . import snapshot
from .stock import SNAPSHOT_TTL_MS, bucket

log = logging.getLogger(__name__)

# KEYS[1] = snapshot, KEYS[2] = held buckets; ARGV[1] = bucket (expiry second, '' for none), ARGV[2] =
# held delta, ARGV[3] = paying delta, ARGV[4] = confirmed delta, ARGV[5] = TTL ms. Applies the movement
# only to a snapshot that exists (a missing one is rebuilt whole). Returns 1 if applied, else 0.
MOVE_SCRIPT = lua.Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] ~= '0' then
  redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'paying', ARGV[3]) end
if ARGV[4] ~= '0' then redis.call('HINCRBY', KEYS[1], 'confirmed', ARGV[4]) end
return 1
""")


def move(redis, product_id, *, expires=None, held=0, paying=0, confirmed=0):
    """Apply a committed stock movement to the snapshot (best effort). `held` units move in the bucket
    of `expires`."""
    snapshot.moved_here(product_id)
    try:
        MOVE_SCRIPT(redis, _keys(product_id),
                    [bucket(expires) if held else "", held, paying, confirmed, SNAPSHOT_TTL_MS])
    except RedisError:
        log.warning("could not update the stock snapshot of product %s; it is rebuilt within %.0f s",
                    product_id, snapshot.MAX_AGE_SECONDS)


def move_in(pipe, product_id, expires, held):
    """Queue a batch's new holds on a pipeline (run with lua.execute): the batch queue answers its
    buyers in the same round trip."""
    snapshot.moved_here(product_id)
    MOVE_SCRIPT.queue(pipe, _keys(product_id), [bucket(expires), held, 0, 0, SNAPSHOT_TTL_MS])


def forget(redis, product_ids):
    """Drop the products' snapshots and the catalog order (seeding: the next poll rebuilds them; best
    effort, as an old one is rebuilt within MAX_AGE_SECONDS anyway)."""
    doomed = [keys.catalog_order()]
    for product_id in product_ids:
        snapshot.moved_here(product_id)
        doomed += [keys.stock_snapshot(product_id), keys.stock_snapshot_held(product_id)]
    try:
        redis.delete(*doomed)
    except RedisError:
        log.warning("could not drop the stock snapshots of %s", product_ids)


def _keys(product_id):
    return [keys.stock_snapshot(product_id), keys.stock_snapshot_held(product_id)]
