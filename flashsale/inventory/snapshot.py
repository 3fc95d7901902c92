"""Stock snapshots: what watchers poll, one Redis round trip and no database work.

Per product Redis keeps the product's public JSON, its total, its confirmed and paying (CONFIRMING)
units, and its PENDING units bucketed by expiry second (a hash: the ceiling of hold_expires_at, in epoch
seconds -> units; a batch of holds shares one expiry). A poll runs READ_SCRIPT: available = total -
confirmed - paying - the buckets whose second is still ahead of Redis's clock (stock.py's rule), so a
lapsed hold's units come back at read time without any job (at most one second after the database
clock lets them go, never before), and lapsed buckets are pruned.

Who writes it: every committed stock movement (movements.py), and a rebuild from the database
(rebuild.py) by one poll when a snapshot is older than MAX_AGE_SECONDS (a SET NX claim per product;
the others keep serving the previous snapshot) or missing (Redis flushed, a fresh deploy: the others
wait for it). The same read counts the product's watchers (watchers.py).

Polls of one product in one web process within SHARED_READ_SECONDS (50 ms) share one Redis read, so
under thousands of polls a second a process reads each product's snapshot at most 20 times a second;
a movement made by the same process drops its shared read at once.

The staleness bound: a poll's answer is behind a movement made in another process by at most
SHARED_READ_SECONDS after the movement's Redis write; behind a movement whose write was lost by at most
MAX_AGE_SECONDS + SHARED_READ_SECONDS + one rebuild's duration (in all, 1.1 s with a rebuild of a few
ms); lapsed holds come back up to one second late, never early. So it shows "sold out" at most that
long after the last unit went. It assumes Redis's and the database's clocks agree (same host, or NTP);
any skew adds to it. A CDN obeying Cache-Control max-age adds its max-age on top.
"""

import json
import time
from dataclasses import replace

from sqlalchemy import select

from .. import keys, lua
from ..errors import NotFound, Unavailable
from ..models import Product
from . import rebuild, watchers
from .stock import Snapshot

MAX_AGE_SECONDS = 1.0  # a snapshot older than this is rebuilt from the database by the next poll
REBUILD_LOCK_MS = 2000  # one rebuilder per product; a rebuilder that dies frees it after this
WAIT_FOR_REBUILD_SECONDS = 2.0  # how long polls of a missing snapshot wait for its rebuilder
CATALOG_TTL_MS = 1000  # the products' order for the list, kept as briefly as a snapshot

# KEYS[1] = snapshot, KEYS[2] = held buckets, KEYS[3..5] = watchers.watcher_keys; ARGV = addresses of
# the polls this process answered since its last read. Returns {present, watchers, now s, now us, and
# when present: product JSON, total, confirmed, paying, built (epoch s), starts, ends (epoch s), held
# units}.
READ_SCRIPT = lua.Script(watchers.WATCHERS_LUA + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local head = {0, count_watchers(KEYS[3], KEYS[4], KEYS[5], t[1], ARGV), t[1], t[2]}
local snap = redis.call('HMGET', KEYS[1], 'product', 'total', 'confirmed', 'paying', 'built', 'starts', 'ends')
if not snap[2] then return head end
head[1] = 1
local held, lapsed = 0, {}
local buckets = redis.call('HGETALL', KEYS[2])
for i = 1, #buckets, 2 do
  if tonumber(buckets[i]) > now then held = held + tonumber(buckets[i + 1])
  else lapsed[#lapsed + 1] = buckets[i] end
end
if #lapsed > 0 then redis.call('HDEL', KEYS[2], unpack(lapsed)) end
for i = 1, 7 do head[#head + 1] = snap[i] end
head[#head + 1] = held
return head
""")


def catalog(session, redis):
    """Every product's id in the sales list's order, from Redis when read in the last CATALOG_TTL_MS."""
    raw = redis.get(keys.catalog_order())
    if raw is not None:
        return json.loads(raw)
    ids = session.execute(select(Product.id).order_by(Product.sale_starts_at, Product.id)).scalars().all()
    session.rollback()
    redis.set(keys.catalog_order(), json.dumps(ids), px=CATALOG_TTL_MS)
    return ids


def read(session, redis, product_id, max_age=MAX_AGE_SECONDS, watcher=None):
    """The product's snapshot now; NotFound if the product is gone."""
    found = read_many(session, redis, [product_id], max_age, watcher)
    if product_id not in found:
        raise NotFound("No such product.")
    return found[product_id]


def read_many(session, redis, product_ids, max_age=MAX_AGE_SECONDS, watcher=None):
    """{product id: Snapshot}, rebuilding missing or old ones (one rebuilder each).

    Polls of the same product in this process within SHARED_READ_SECONDS share one Redis read (its
    clock moved on by the time since); `watcher` (the client's address) is counted with the next read.
    """
    found, missed, moment = {}, [], time.monotonic()
    for product_id in product_ids:
        if watcher is not None:
            watchers.saw(product_id, watcher)
        hit = _shared.get(product_id)
        if hit is not None and moment - hit[0] < SHARED_READ_SECONDS and max_age >= MAX_AGE_SECONDS:
            found[product_id] = replace(hit[1], now=hit[1].now + (moment - hit[0]))
        else:
            missed.append(product_id)
    if missed:
        watching = {}
        for product_id, raw in zip(missed, _read(redis, missed), strict=True):
            watching[product_id] = int(raw[1])
            snap = _parse(product_id, raw)
            if snap is not None:
                found[product_id] = snap
        stale = [pid for pid in missed if pid not in found or found[pid].age > max_age]
        if stale and session is None:  # read_fresh: no database here, the caller lets Flask rebuild
            for product_id in stale:
                found.pop(product_id, None)
        elif stale:
            _refresh(session, redis, stale, found, max_age)
        for product_id in missed:
            if product_id in found:
                found[product_id] = replace(found[product_id], watchers=watching[product_id])
                _shared[product_id] = (moment, found[product_id])
    return {pid: found[pid] for pid in product_ids if pid in found}


def read_fresh(redis, product_id, watcher=None):
    """The product's snapshot if this process's shared read or Redis has one young enough, else None:
    no database (the poll gate hands such a poll to Flask, which rebuilds it)."""
    return read_many(None, redis, [product_id], watcher=watcher).get(product_id)


SHARED_READ_SECONDS = 0.05  # adds as much to the staleness bound
_shared = {}  # product id -> (monotonic read at, Snapshot): this process's polls share a read


def moved_here(product_id):
    """A movement in this process: its next poll of the product reads Redis again."""
    _shared.pop(product_id, None)


def forget_shared():
    """Drop this process's shared reads (between tests)."""
    _shared.clear()
    watchers.forget()


def _read(redis, product_ids):
    """READ_SCRIPT's answers for the products, in one round trip."""
    minute = int(time.time() // 60)
    if len(product_ids) == 1:
        pid = product_ids[0]
        return [READ_SCRIPT(redis, _keys(pid, minute), watchers.take(pid))]
    pipe = redis.pipeline(transaction=False)
    for pid in product_ids:
        READ_SCRIPT.queue(pipe, _keys(pid, minute), watchers.take(pid))
    return lua.execute(pipe)


def _keys(product_id, minute):
    return (keys.stock_snapshot(product_id), keys.stock_snapshot_held(product_id),
            *watchers.watcher_keys(product_id, minute))


def _parse(product_id, raw):
    """The Snapshot in READ_SCRIPT's answer, or None when the snapshot is missing."""
    if not int(raw[0]):
        return None
    now = int(raw[2]) + int(raw[3]) / 1_000_000
    product, total, confirmed, paying, built, starts, ends, held = raw[4:12]
    return Snapshot(product_id, product.decode(), int(total), int(confirmed), int(paying), int(held),
                    float(starts), float(ends), float(built), now, int(raw[1]))


def _refresh(session, redis, stale, found, max_age):
    """Rebuild the stale snapshots we win the lock for; wait (briefly) for the missing ones others rebuild."""
    _rebuild_claimed(session, redis, stale, found, max_age)
    waiting = [pid for pid in stale if pid not in found]
    deadline = time.monotonic() + WAIT_FOR_REBUILD_SECONDS
    while waiting and time.monotonic() < deadline:
        time.sleep(0.01)
        for product_id, raw in zip(waiting, _read(redis, waiting), strict=True):
            snap = _parse(product_id, raw)
            if snap is not None:
                found[product_id] = snap
        waiting = [pid for pid in waiting if pid not in found]
        if waiting:  # the rebuilder died, or the product is gone
            waiting = [pid for pid in waiting
                       if pid not in _rebuild_claimed(session, redis, waiting, found, max_age)]
    if waiting:
        raise Unavailable("The stock is being recounted; try again in a moment.")


def _rebuild_claimed(session, redis, product_ids, found, max_age):
    """Claim the products' rebuild locks; rebuild those still stale once claimed. Returns the claimed.

    A poll that saw a snapshot missing may claim the lock just after its rebuilder freed it, so the
    snapshot is read again under the lock: one rebuild per product, not one per waiting poll.
    """
    claimed = _claim(redis, product_ids)
    if not claimed:
        return claimed
    stale = []
    for product_id, raw in zip(claimed, _read(redis, claimed), strict=True):
        snap = _parse(product_id, raw)
        if snap is not None and snap.age <= max_age:
            found[product_id] = snap
        else:
            stale.append(product_id)
    fresh = [pid for pid in claimed if pid not in stale]
    if fresh:
        redis.delete(*[keys.stock_snapshot_rebuild(pid) for pid in fresh])
    if stale:
        found.update(rebuild.rebuild(session, redis, stale))
    return claimed


def _claim(redis, product_ids):
    pipe = redis.pipeline(transaction=False)
    for product_id in product_ids:
        pipe.set(keys.stock_snapshot_rebuild(product_id), "1", nx=True, px=REBUILD_LOCK_MS)
    return [pid for pid, won in zip(product_ids, pipe.execute(), strict=True) if won]


