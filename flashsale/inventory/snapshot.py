"""Stock snapshots: what watchers poll, one Redis round trip and no database work.

Per product Redis keeps the product's public JSON, its total, its confirmed and paying (CONFIRMING)
units, and its PENDING units bucketed by expiry second (a hash: the ceiling of hold_expires_at, in epoch
seconds -> units; a batch of holds shares one expiry). A poll runs READ_SCRIPT: available = total -
confirmed - paying - the buckets whose second is still ahead of Redis's clock, so a lapsed hold's units
come back at read time without any job (at most one second after the database clock lets them go, never
before), and lapsed buckets are pruned.

Every stock movement updates the snapshot right after its commit, in the function that moved the stock
(`move`: a batch of holds adds to its bucket, a release takes from it, an accepted confirmation moves
units from the bucket to paying, a payment from paying to confirmed, a refused one out of paying; an
expiry changes nothing, its bucket has lapsed already; seeding drops the snapshot). Those writes are
best effort, like the sold-out mark: a crash between commit and write, a Redis error, or a movement
racing a rebuild can leave the snapshot wrong. So a snapshot older than MAX_AGE_SECONDS is rebuilt from
the database by one poll (a SET NX lock per product; the others keep serving the previous snapshot),
and a missing one (Redis flushed, a fresh deploy) likewise by one poll while the others wait for it.

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
import logging
import math
import time
import zlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from redis.exceptions import RedisError
from sqlalchemy import DateTime, case, cast, func, literal, null, select, union_all

from .. import keys
from ..errors import NotFound, Unavailable
from ..models import CONFIRMING, PENDING, Order, Product
from .clock import now_expression
from .stock import StockLevel, holding_stock

MAX_AGE_SECONDS = 1.0  # a snapshot older than this is rebuilt from the database by the next poll
REBUILD_LOCK_MS = 2000  # one rebuilder per product; a rebuilder that dies frees it after this
WAIT_FOR_REBUILD_SECONDS = 2.0  # how long polls of a missing snapshot wait for its rebuilder
TTL_MS = 24 * 3600 * 1000  # a snapshot nobody polls or moves for a day goes away
CATALOG_TTL_MS = 1000  # the products' order for the list, kept as briefly as a snapshot

log = logging.getLogger(__name__)

# KEYS[1] = snapshot, KEYS[2] = held buckets, KEYS[3] = watchers' state (a hash), KEYS[4] / KEYS[5] =
# this / the previous minute's watchers (HyperLogLogs of client addresses); ARGV = addresses of the
# polls this process answered since its last read. Returns {present, watchers (distinct addresses in
# the last one to two minutes, recounted once a second), now s, now us, and when present: product
# JSON, total, confirmed, paying, built (epoch s), starts, ends (epoch s), held units}.
READ_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if #ARGV > 0 and redis.call('PFADD', KEYS[4], unpack(ARGV)) == 1 then
  redis.call('PEXPIRE', KEYS[4], 180000)
end
local watch = redis.call('HMGET', KEYS[3], 'sec', 'watchers')
local watchers = tonumber(watch[2] or '0')
if watch[1] ~= t[1] then
  watchers = redis.call('PFCOUNT', KEYS[4], KEYS[5])
  redis.call('HSET', KEYS[3], 'sec', t[1], 'watchers', watchers)
  redis.call('PEXPIRE', KEYS[3], 600000)
end
local head = {0, watchers, t[1], t[2]}
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
"""

# KEYS[1] = snapshot, KEYS[2] = held buckets; ARGV[1] = bucket (expiry second, '' for none), ARGV[2] =
# held delta, ARGV[3] = paying delta, ARGV[4] = confirmed delta, ARGV[5] = TTL ms. Applies the movement
# only to a snapshot that exists (a missing one is rebuilt whole). Returns 1 if applied, else 0.
MOVE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] ~= '0' then
  redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'paying', ARGV[3]) end
if ARGV[4] ~= '0' then redis.call('HINCRBY', KEYS[1], 'confirmed', ARGV[4]) end
return 1
"""

# KEYS[1] = snapshot, KEYS[2] = held buckets, KEYS[3] = rebuild lock; ARGV[1] = product JSON, ARGV[2] =
# total, ARGV[3] = confirmed, ARGV[4] = paying, ARGV[5] = starts, ARGV[6] = ends (epoch s), ARGV[7] = TTL
# ms, ARGV[8..] = bucket, units pairs. Replaces the snapshot, stamps it with Redis's clock, frees the
# lock. Returns the stamp (epoch s, as text).
REBUILD_SCRIPT = """
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
"""


@dataclass(frozen=True)
class Snapshot:
    """One product's stock as a poll saw it, by Redis's clock (`now`, epoch seconds)."""

    product_id: int
    product_json: str  # the product's fields that only seeding changes, as compact JSON
    total: int
    confirmed: int
    paying: int
    held: int
    starts: float
    ends: float
    built: float
    now: float
    watchers: int = 0  # distinct addresses that polled the product in the last minute or two

    @property
    def available(self):
        return max(self.total - self.confirmed - self.paying - self.held, 0)

    @property
    def level(self):
        """The same picture as stock.stock_levels gives (the dashboard's rows)."""
        return StockLevel(self.total, self.confirmed, self.held, self.paying)

    @property
    def state(self):
        """upcoming | live | sold_out | ended at the poll's instant (stock.sale_state's rule)."""
        if self.now < self.starts:
            return "upcoming"
        if self.now >= self.ends:
            return "ended"
        return "sold_out" if self.available <= 0 else "live"

    @property
    def age(self):
        return self.now - self.built

    @property
    def etag(self):
        """Changes exactly when what a watcher is shown changes (not with the clock or the pace)."""
        return f'"{self.product_id}-{crc(self.product_json)}-{self.total}-{self.available}-{self.state}"'


def crc(text):
    """A short checksum of some text, for ETags."""
    return format(zlib.crc32(text.encode()), "x")


def bucket(hold_expires_at):
    """The held bucket of holds expiring at this instant: the next whole second (never early)."""
    return str(math.ceil(hold_expires_at.timestamp()))


def move(redis, product_id, *, expires=None, held=0, paying=0, confirmed=0):
    """Apply a committed stock movement to the snapshot (best effort: a lost write lasts until the
    next rebuild, MAX_AGE_SECONDS at most). `held` units move in the bucket of `expires`."""
    moved_here(product_id)
    try:
        redis.eval(MOVE_SCRIPT, 2, keys.stock_snapshot(product_id), keys.stock_snapshot_held(product_id),
                   bucket(expires) if held else "", held, paying, confirmed, TTL_MS)
    except RedisError:
        log.warning("could not update the stock snapshot of product %s; it is rebuilt within %.0f s",
                    product_id, MAX_AGE_SECONDS)


def move_in(pipe, product_id, expires, held):
    """Queue a batch's new holds on a pipeline (the line answers its buyers in the same round trip)."""
    moved_here(product_id)
    pipe.eval(MOVE_SCRIPT, 2, keys.stock_snapshot(product_id), keys.stock_snapshot_held(product_id),
              bucket(expires), held, 0, 0, TTL_MS)


def forget(redis, product_ids):
    """Drop the products' snapshots and the catalog order (seeding: the next poll rebuilds them; best
    effort, as an old one is rebuilt within MAX_AGE_SECONDS anyway)."""
    doomed = [keys.catalog_order()]
    for product_id in product_ids:
        moved_here(product_id)
        doomed += [keys.stock_snapshot(product_id), keys.stock_snapshot_held(product_id)]
    try:
        redis.delete(*doomed)
    except RedisError:
        log.warning("could not drop the stock snapshots of %s", product_ids)


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
            _watchers.setdefault(product_id, set()).add(watcher)
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
_watchers = {}  # product id -> addresses polling since this process's last read


def moved_here(product_id):
    """A movement in this process: its next poll of the product reads Redis again."""
    _shared.pop(product_id, None)


def forget_shared():
    """Drop this process's shared reads (between tests)."""
    _shared.clear()
    _watchers.clear()


def _read(redis, product_ids):
    """READ_SCRIPT's answers for the products, in one round trip (EVALSHA: the script is sent once)."""
    script = _scripts.get(id(redis))
    if script is None:
        script = _scripts[id(redis)] = redis.register_script(READ_SCRIPT)
    minute = int(time.time() // 60)
    if len(product_ids) == 1:
        pid = product_ids[0]
        return [script(keys=_keys(pid, minute), args=list(_watchers.pop(pid, ()))[:MAX_ADDRESSES])]
    pipe = redis.pipeline(transaction=False)
    for pid in product_ids:
        script(keys=_keys(pid, minute), args=list(_watchers.pop(pid, ()))[:MAX_ADDRESSES], client=pipe)
    return pipe.execute()


MAX_ADDRESSES = 1000  # watchers counted per read at most
_scripts = {}  # id(redis client) -> its registered READ_SCRIPT


def _keys(product_id, minute):
    return (keys.stock_snapshot(product_id), keys.stock_snapshot_held(product_id),
            keys.stock_watchers(product_id), keys.stock_watchers_seen(product_id, minute),
            keys.stock_watchers_seen(product_id, minute - 1))


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
        found.update(rebuild(session, redis, stale))
    return claimed


def _claim(redis, product_ids):
    pipe = redis.pipeline(transaction=False)
    for product_id in product_ids:
        pipe.set(keys.stock_snapshot_rebuild(product_id), "1", nx=True, px=REBUILD_LOCK_MS)
    return [pid for pid, won in zip(product_ids, pipe.execute(), strict=True) if won]


def rebuild(session, redis, product_ids):
    """Read the products' stock from the database (one statement) and replace their snapshots."""
    from ..api.serialise import static_product_json

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
        pipe.eval(REBUILD_SCRIPT, 3, keys.stock_snapshot(product.id), keys.stock_snapshot_held(product.id),
                  keys.stock_snapshot_rebuild(product.id), text, product.total_stock, confirmed, paying,
                  repr(starts), repr(ends), TTL_MS, *pairs)
        built.append((product, text, confirmed, paying, buckets, starts, ends))
    for product_id in set(product_ids) - {p.id for p in products}:
        pipe.delete(keys.stock_snapshot_rebuild(product_id))
    stamps = pipe.execute()[:len(built)]
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
