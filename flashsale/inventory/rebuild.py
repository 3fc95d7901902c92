"""Rebuilding stock snapshots from the database: one statement, one pipelined write.

A poll that finds a product's snapshot missing or older than snapshot.MAX_AGE_SECONDS claims its
rebuild (snapshot.py) and calls `rebuild`: the confirmed, paying and held units are read in one
statement (one database snapshot, with stock.py's rule), and REBUILD_SCRIPT replaces the snapshot and
stamps it with Redis's clock.
"""

import json
import time
from datetime import datetime, timezone

from sqlalchemy import DateTime, case, cast, func, literal, null, select, union_all

from .. import keys, lua
from ..models import CONFIRMING, PENDING, Order, Product
from ..serialise import static_product_json
from .clock import now_expression
from .stock import SNAPSHOT_TTL_MS, Snapshot, bucket, holding_stock

# KEYS[1] = snapshot, KEYS[2] = held buckets, KEYS[3] = rebuild lock; ARGV[1] = product JSON, ARGV[2] =
# total, ARGV[3] = confirmed, ARGV[4] = paying, ARGV[5] = starts, ARGV[6] = ends (epoch s), ARGV[7] = TTL
# ms, ARGV[8..] = bucket, units pairs. Replaces the snapshot, stamps it with Redis's clock, frees the
# lock. Returns the stamp (epoch s, as text).
REBUILD_SCRIPT = lua.Script("""
local t = redis.call('TIME')
local built = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'product', ARGV[1], 'total', ARGV[2], 'confirmed', ARGV[3], 'paying', ARGV[4],
           'starts', ARGV[5], 'ends', ARGV[6], 'built', built)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if #ARGV > 7 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 8))
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
return built
""")


def rebuild(session, redis, product_ids):
    """Read the products' stock from the database (one statement) and replace their snapshots."""
    counted = _count(session, product_ids)
    products = session.execute(select(Product).where(Product.id.in_(product_ids))).scalars().all()
    session.rollback()  # end the read: a poll holds nothing open
    redis.incrby(keys.metrics("snapshot_rebuilds"), len(product_ids))
    pipe = redis.pipeline(transaction=False)
    built = []
    for product in products:
        confirmed, paying, buckets = counted.get(product.id, (0, 0, {}))
        text = json.dumps(static_product_json(product), separators=(",", ":"))
        starts, ends = product.sale_starts_at.timestamp(), product.sale_ends_at.timestamp()
        pairs = [item for second, units in sorted(buckets.items()) for item in (second, units)]
        REBUILD_SCRIPT.queue(
            pipe, [keys.stock_snapshot(product.id), keys.stock_snapshot_held(product.id),
                   keys.stock_snapshot_rebuild(product.id)],
            [text, product.total_stock, confirmed, paying, repr(starts), repr(ends), SNAPSHOT_TTL_MS, *pairs])
        built.append((product, text, confirmed, paying, buckets, starts, ends))
    for product_id in set(product_ids) - {p.id for p in products}:
        pipe.delete(keys.stock_snapshot_rebuild(product_id))
    stamps = lua.execute(pipe)[:len(built)]
    now = time.time()
    return {product.id: Snapshot(product.id, text, product.total_stock, confirmed, paying,
                                 sum(u for s, u in buckets.items() if int(s) > now), starts, ends,
                                 float(stamp), float(stamp))
            for (product, text, confirmed, paying, buckets, starts, ends), stamp in zip(built, stamps, strict=True)}


def _count(session, product_ids):
    """{product id: (confirmed, paying, {bucket: units})} in one statement (one database snapshot)."""
    now = now_expression(session)
    no_expiry = cast(null(), DateTime(timezone=True))
    counter = select(Product.id, literal("CONFIRMED"), no_expiry, Product.confirmed_units).where(
        Product.id.in_(product_ids))
    holding = (
        select(Order.product_id, Order.status,
               case((Order.status == PENDING, Order.hold_expires_at), else_=no_expiry),
               func.sum(Order.quantity))
        .where(Order.product_id.in_(product_ids), holding_stock(now))
        .group_by(Order.product_id, Order.status,
                  case((Order.status == PENDING, Order.hold_expires_at), else_=no_expiry)))
    counted = {}
    for product_id, status, expires, units in session.execute(union_all(counter, holding)):
        confirmed, paying, buckets = counted.setdefault(product_id, [0, 0, {}])
        if status == PENDING:
            if isinstance(expires, str):  # SQLite hands back raw text from a union
                expires = datetime.fromisoformat(expires)
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=timezone.utc)
            second = bucket(expires)
            buckets[second] = buckets.get(second, 0) + int(units)
        elif status == CONFIRMING:
            counted[product_id][1] = paying + int(units)
        else:
            counted[product_id][0] = confirmed + int(units or 0)
    return {pid: (c, p, b) for pid, (c, p, b) in counted.items()}
