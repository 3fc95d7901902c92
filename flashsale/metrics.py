"""Counters, latency samples and time series in Redis, so every web process and worker agrees.

Recording costs one round trip (a Lua script), or none where a process batches its recordings
(METRICS_BATCH_SECONDS: web processes and workers write theirs every quarter second, before they read
the metrics themselves, and when they end; one killed outright loses at most that much). Time series
are a ring of BUCKET_SECONDS buckets that expire after WINDOW_BUCKETS buckets, so nothing grows
without bound. Gauges that are not events (available stock per product, latency percentiles) are
sampled into the same ring of buckets whenever the metrics are read, so the dashboard's poll is what
draws their history.
"""

import atexit
import collections
import logging
import math
import multiprocessing.util
import os
import threading
import time

from redis.exceptions import RedisError

from . import keys, lua

log = logging.getLogger(__name__)

BUCKET_SECONDS = 5
WINDOW_BUCKETS = 120  # ten minutes of history
LATENCY_SAMPLES = 2000
OUTCOMES = ("created", "accepted", "confirmed", "expired", "released", "payment_refused", "refunded",
            "voided", "reconciled", "sold_out", "rate_limited", "busy", "rejected", "unavailable")
# What a settled payment counts as (payments.Settled.outcome); "pending" and "skipped" count nothing.
PAYMENT_OUTCOMES = {"confirmed": "confirmed", "refused": "payment_refused", "refunded": "refunded",
                    "voided": "voided"}
STARTED_AT_KEY = keys.metrics("started_at")


def _bucket(now=None):
    return int((now or time.time()) // BUCKET_SECONDS)


# One Lua function records outcomes and latency samples; record_outcome runs it as a script, and the
# sold-out gate (gates/sold_out.py) and the hold route's limits (web/hold_limits.py) run it inside
# their own scripts, so all write the same layout.
# record(totals, bucket, started, bucket_ttl, now, {outcome, count, ...}, {ring, value, ...}, samples)
RECORD_LUA = """
local function record(totals, bucket, started, bucket_ttl, now, outcomes, rings, samples)
  for i = 1, #outcomes, 2 do
    redis.call('HINCRBY', totals, outcomes[i], outcomes[i + 1])
    redis.call('HINCRBY', bucket, outcomes[i], outcomes[i + 1])
  end
  redis.call('EXPIRE', bucket, bucket_ttl)
  for i = 1, #rings, 2 do
    redis.call('LPUSH', rings[i], rings[i + 1])
    redis.call('LTRIM', rings[i], 0, samples - 1)
  end
  redis.call('SET', started, now, 'NX')
end
"""

# KEYS = totals, bucket, started, ring keys...; ARGV = bucket_ttl, now, samples, n_outcomes,
# outcome/count pairs..., then how many values each ring key gets, then those values in ring order.
RECORD_SCRIPT = lua.Script(RECORD_LUA + """
local n = tonumber(ARGV[4])
local outcomes, rings = {}, {}
for i = 1, 2 * n do outcomes[i] = ARGV[4 + i] end
local counts = 4 + 2 * n
local at = counts + #KEYS - 3
for k = 4, #KEYS do
  for _ = 1, tonumber(ARGV[counts + k - 3]) do
    at = at + 1
    rings[#rings + 1] = KEYS[k]
    rings[#rings + 1] = ARGV[at]
  end
end
record(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], outcomes, rings, tonumber(ARGV[3]))
""")


def recording_keys(now=None):
    """The keys every recording touches, in RECORD_LUA's order: totals, this bucket, started-at."""
    return [keys.metrics("totals"), keys.metrics(f"bucket:{_bucket(now)}"), STARTED_AT_KEY]


def recording_args(now=None):
    """RECORD_LUA's bucket_ttl, now and samples arguments."""
    return [BUCKET_SECONDS * WINDOW_BUCKETS, int(now or time.time()), LATENCY_SAMPLES]


def record_outcome(redis, outcome, count=1, latency_ms=None, lock_wait_ms=None, payment_ms=None,
                   also=()):
    """Count one outcome (and optionally its latencies) in the totals and the current bucket: one
    round trip, or none where this process batches its recordings (batch_recordings).

    also: further outcomes counted once each in the same round trip (a reconciled confirmation).
    """
    outcomes = [(outcome, count), *((extra, 1) for extra in also)]
    samples = [(keys.metrics(ring), round(value, 2)) for ring, value in
               (("latency", latency_ms), ("lock_wait", lock_wait_ms), ("payment", payment_ms))
               if value is not None]
    batch = _batch
    if batch is not None:
        batch.add(redis, outcomes, samples)
        return
    _write_now(redis, outcomes, samples)


def _write_now(redis, outcomes, samples):
    _write(redis, {_bucket(): _tally(collections.Counter(), outcomes)}, {key: [value] for key, value in samples})


def _tally(counts, outcomes):
    """Add (outcome, count) pairs to a Counter; returns it."""
    for outcome, count in outcomes:
        counts[outcome] += count
    return counts


def _write(redis, buckets, samples):
    """Add {bucket: {outcome: count}} and {ring key: [values]} to Redis: one script call per bucket."""
    last = max(buckets)
    for bucket in sorted(buckets):
        rings = samples if bucket == last else {}
        outcomes = [x for pair in buckets[bucket].items() for x in pair]
        try:
            RECORD_SCRIPT(redis, [*recording_keys(bucket * BUCKET_SECONDS), *rings],
                          [*recording_args(), len(outcomes) // 2, *outcomes,
                           *(len(values) for values in rings.values()),
                           *(value for values in rings.values() for value in values)])
        except RedisError:
            log.warning("metrics not recorded (%s): Redis unavailable", ", ".join(buckets[bucket]))


class _Batch:
    """This process's recordings on their way to Redis, written every `seconds` by a thread of its own,
    before this process reads the metrics, and when it exits: a hold's request then makes no round
    trip for its metrics, and the counts land in the bucket of the moment they were recorded."""

    def __init__(self, seconds):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._pending = {}  # id(redis) -> (redis, {bucket: Counter}, {ring key: [values]})
        self._stopped = threading.Event()
        self._thread = None

    def add(self, redis, outcomes, samples):
        if self._stopped.is_set():  # batching was switched off after this call picked the batch up
            _write_now(redis, outcomes, samples)
            return
        with self._lock:
            entry = self._pending.get(id(redis))
            if entry is None:
                entry = self._pending[id(redis)] = (redis, {}, {})
            _tally(entry[1].setdefault(_bucket(), collections.Counter()), outcomes)
            for key, value in samples:
                entry[2].setdefault(key, []).append(value)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="metrics-batch")
                self._thread.start()
                # What is left is written when the process ends: through the interpreter's exit, or
                # the finalizers of a multiprocessing child (granian's workers), which skips atexit.
                atexit.register(self.flush)
                multiprocessing.util.Finalize(self, self.flush, exitpriority=0)

    def flush(self):
        """Write everything recorded so far."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for redis, buckets, samples in pending.values():
            _write(redis, buckets, samples)

    def stop(self):
        self._stopped.set()
        self.flush()

    def _run(self):
        while not self._stopped.wait(self.seconds):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the thread must outlive any one bad write
                log.exception("metrics batch not written")


_batch = None


def batch_recordings(seconds):
    """From now on this process writes its recordings every `seconds` instead of one round trip each
    (0: one round trip each again, after writing what is pending)."""
    global _batch
    previous, _batch = _batch, (_Batch(seconds) if seconds > 0 else None)
    if previous is not None:
        previous.stop()


def flush():
    """Write this process's pending recordings now (before it reads the metrics)."""
    batch = _batch
    if batch is not None:
        batch.flush()


def _forget_in_child():
    # A forked child starts with nothing pending: its parent writes its own, and the child's lock and
    # thread must be new ones.
    global _batch
    if _batch is not None:
        _batch = _Batch(_batch.seconds)


os.register_at_fork(after_in_child=_forget_in_child)


def record_payment(redis, settled, reconciled=False):
    """Count what one payment attempt or reconciliation settled, with accepted -> confirmed latency."""
    outcome = PAYMENT_OUTCOMES.get(settled.outcome)
    if outcome is None:
        return
    latency = settled.latency_seconds
    record_outcome(redis, outcome, payment_ms=latency * 1000 if latency is not None else None,
                   also=("reconciled",) if reconciled else ())


def percentile(values, q):
    """The q-th percentile by nearest rank: the smallest value with at least q % of values at or below
    it (the median of 1..5 is 3); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def percentiles(samples, points=(50, 95, 99)):
    """{"p50": ..., "p95": ..., "p99": ...} of a list of numbers by nearest rank (None when empty)."""
    ordered = sorted(samples)
    return {f"p{p}": percentile(ordered, p) for p in points}


def snapshot(redis, buckets=WINDOW_BUCKETS, now=None):
    """Totals, per-bucket series and latency percentiles, as the dashboard reads them."""
    flush()
    now_bucket = _bucket(now)
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.metrics("totals"))
    pipe.lrange(keys.metrics("latency"), 0, -1)
    pipe.lrange(keys.metrics("lock_wait"), 0, -1)
    pipe.lrange(keys.metrics("payment"), 0, -1)
    pipe.get(STARTED_AT_KEY)
    for b in range(now_bucket - buckets + 1, now_bucket + 1):
        pipe.hgetall(keys.metrics(f"bucket:{b}"))
    totals, latency, lock_wait, payment, started, *series = pipe.execute()
    decode = lambda h: {k.decode(): int(v) for k, v in h.items()}  # noqa: E731
    return {
        "started_at": int(started) if started else None,
        "bucket_seconds": BUCKET_SECONDS,
        "totals": {o: decode(totals).get(o, 0) for o in OUTCOMES},
        "series": [
            {"t": (now_bucket - buckets + 1 + i) * BUCKET_SECONDS, **decode(h)}
            for i, h in enumerate(series)
        ],
        "hold_latency_ms": percentiles([float(x) for x in latency]),
        "lock_wait_ms": percentiles([float(x) for x in lock_wait]),
        # From the 202 (confirmation accepted) to CONFIRMED, by the database clock.
        "payment_latency_ms": percentiles([float(x) for x in payment]),
    }


def sample_gauges(redis, stock_by_product, hold_latency, lock_wait, payment_latency=None, now=None):
    """Store this bucket's gauges: available stock per product id and the latency percentiles."""
    key = keys.metrics(f"gauges:{_bucket(now)}")
    values = {f"stock:{pid}": available for pid, available in stock_by_product.items()}
    for name, points in (("latency", hold_latency), ("lock_wait", lock_wait),
                         ("payment", payment_latency or {})):
        values.update({f"{name}:{p}": v for p, v in points.items() if v is not None})
    if not values:
        return
    pipe = redis.pipeline(transaction=False)
    pipe.hset(key, mapping=values)
    pipe.expire(key, BUCKET_SECONDS * WINDOW_BUCKETS)
    pipe.execute()


def gauge_series(redis, buckets=WINDOW_BUCKETS, now=None):
    """[{"t": bucket start, "stock": {pid: available}, "latency": {...}, "lock_wait": {...},
    "payment": {...}}] oldest first.

    A bucket nobody sampled has empty mappings (the chart shows a gap, not a made-up value).
    """
    now_bucket = _bucket(now)
    first = now_bucket - buckets + 1
    pipe = redis.pipeline(transaction=False)
    for b in range(first, now_bucket + 1):
        pipe.hgetall(keys.metrics(f"gauges:{b}"))
    series = []
    for i, raw in enumerate(pipe.execute()):
        point = {"t": (first + i) * BUCKET_SECONDS, "stock": {}, "latency": {}, "lock_wait": {},
                 "payment": {}}
        for field, value in raw.items():
            group, _, name = field.decode().partition(":")
            if group in point:
                point[group][name] = float(value) if group != "stock" else int(value)
        series.append(point)
    return series
