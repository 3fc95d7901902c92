"""The fast sold-out mark: rejects a herd at Redis speed without the lock or the database.

The mark may only err towards "maybe": it is written under the product lock right after the database
said no unit is free, expires no later than the earliest active hold does (read-time expiry brings that
unit back without any job), and is dropped whenever stock returns. A generation counter closes the race
where stock returns between our database read and our write of the mark.
"""

import logging

from redis.exceptions import RedisError

from .. import keys, lua

# Longest a mark lives even when nothing is held (all confirmed): bounds any staleness after a crash.
MAX_MARK_MS = 10_000

# KEYS[1] = sold-out mark, KEYS[2] = stock generation; ARGV[1] = generation read before the database
# transaction, ARGV[2] = mark TTL (ms). Returns 1 if the mark was written, 0 if stock came back meanwhile.
MARK_SCRIPT = lua.Script("""
local current = redis.call('GET', KEYS[2]) or '0'
if current == ARGV[1] then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
  return 1
end
return 0
""")

# KEYS[1] = sold-out mark, KEYS[2] = stock generation. Returns the new generation.
CLEAR_SCRIPT = lua.Script("""
redis.call('DEL', KEYS[1])
return redis.call('INCR', KEYS[2])
""")

log = logging.getLogger(__name__)


def generation(redis, product_id):
    """The product's stock generation; the lock attempt reads it (read_with) before the database."""
    return (redis.get(keys.stock_generation(product_id)) or b"0").decode()


def is_marked(redis, product_id):
    """True when the product was sold out a moment ago and no stock has come back since."""
    return redis.exists(keys.sold_out(product_id)) == 1


def mark(redis, product_id, generation, ttl_ms):
    """Mark the product sold out for ttl_ms unless stock came back after `generation` was read."""
    ttl_ms = int(max(1, min(ttl_ms, MAX_MARK_MS)))
    keys_ = [keys.sold_out(product_id), keys.stock_generation(product_id)]
    return bool(MARK_SCRIPT(redis, keys_, [generation, ttl_ms]))


def mark_until(redis, product_id, generation, earliest_hold_expiry, now):
    """Mark the product sold out until its earliest hold could lapse (best effort: Redis may be down)."""
    if earliest_hold_expiry is None:
        ttl_ms = MAX_MARK_MS
    else:
        ttl_ms = (earliest_hold_expiry - now).total_seconds() * 1000
    try:
        mark(redis, product_id, generation, ttl_ms)
    except RedisError:
        log.warning("could not mark product %s sold out", product_id)


def stock_returned(redis, product_ids):
    """Drop the sold-out marks of products whose stock just came back (best effort: marks expire)."""
    try:
        pipe = redis.pipeline(transaction=False)
        for product_id in set(product_ids):
            CLEAR_SCRIPT.queue(pipe, [keys.sold_out(product_id), keys.stock_generation(product_id)])
        lua.execute(pipe)
    except RedisError:
        log.warning("could not clear sold-out marks for %s; they expire by themselves", product_ids)
