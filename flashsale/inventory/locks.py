"""The per-product Redis lock that serialises hold creation for one product only.

SET NX PX with a random token takes it; a Lua compare-and-delete releases it, so a holder whose lock
lapsed can never delete the next holder's. Waiters do not sleep-poll: they block on a one-slot "wake"
list that every release pushes to, so Redis hands the lock's release to the longest waiter at once.
The lock is only an optimisation against a convoy on the database: PostgreSQL's row lock on the product
is the real arbiter, so a lock that expires mid-request still cannot oversell.
"""

import logging
import random
import secrets
import time

from redis.exceptions import RedisError

from .. import keys
from ..errors import LockBusy

# KEYS[1] = lock key, KEYS[2] = a key whose presence refuses the lock (or the lock key again: none),
# KEYS[3] = a key read atomically with each attempt (or the lock key again); ARGV[1] = token, ARGV[2] =
# TTL (ms). Returns {state, value of KEYS[3]}: state 1 = taken, 0 = held by another, -1 = refused.
ACQUIRE_SCRIPT = """
local value = redis.call('GET', KEYS[3])
if KEYS[2] ~= KEYS[1] and redis.call('EXISTS', KEYS[2]) == 1 then
  return {-1, value}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, value}
end
return {0, value}
"""

# KEYS[1] = lock key, KEYS[2] = wake list; ARGV[1] = holder's token, ARGV[2] = wake list TTL (ms).
# Returns 1 when the token still held the lock (deleted, one waiter woken), 0 when it had lapsed.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# Longest single block on the wake list: a lock that lapses (its holder died) wakes nobody, so waiters
# look again at least this often. Jitter keeps them from retrying in lockstep.
MAX_BLOCK_SECONDS = 0.05

log = logging.getLogger(__name__)


class LockRefused(Exception):
    """The lock's refuse_if key exists (for the product lock: the product is marked sold out)."""


class ProductLock:
    """`with ProductLock(redis, product_id, ttl_ms, wait_ms):` holds the product's lock or raises LockBusy.

    refuse_if: a key whose presence makes every attempt give up with LockRefused instead of waiting
    (buyers queued behind the lock learn of a sell-out at once). read_with: a key whose value is read
    atomically with the attempt that takes the lock, kept in read_value. Both in the same round trip.
    """

    def __init__(self, redis, product_id, ttl_ms, wait_ms, refuse_if=None, read_with=None):
        self.redis = redis
        self.key = keys.lock(product_id)
        self.wake_key = keys.lock_wake(product_id)
        self.ttl_ms = ttl_ms
        self.wait_ms = wait_ms
        self.token = secrets.token_hex(16)
        self.waited_ms = 0.0
        self.read_value = None
        self._attempt_keys = [self.key, refuse_if or self.key, read_with or self.key]
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    def acquire(self):
        """Take the lock within wait_ms, blocking on the wake list between attempts."""
        started = time.monotonic()
        deadline = started + self.wait_ms / 1000
        while True:
            state, self.read_value = self._acquire(keys=self._attempt_keys,
                                                   args=[self.token, self.ttl_ms])
            if state == 1:
                self.waited_ms = (time.monotonic() - started) * 1000
                return self
            if state == -1:
                self.waited_ms = (time.monotonic() - started) * 1000
                raise LockRefused()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.waited_ms = (time.monotonic() - started) * 1000
                raise LockBusy(waited_ms=self.waited_ms)
            block = min(remaining, MAX_BLOCK_SECONDS * (0.5 + random.random()))
            self.redis.blpop([self.wake_key], timeout=max(block, 0.001))

    def release(self):
        """Delete the lock only if this holder still owns it; True when it did."""
        return bool(self._release(keys=[self.key, self.wake_key], args=[self.token, self.ttl_ms]))

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        try:
            self.release()
        except RedisError:
            # The work inside the lock is committed; the TTL frees the lock if Redis just went away.
            log.warning("could not release %s; it will lapse after %d ms", self.key, self.ttl_ms)
        return False
