"""The per-product Redis lock that serialises hold creation for one product only.

SET NX PX with a random token takes it; a Lua compare-and-delete releases it, so a holder whose lock
lapsed can never delete the next holder's. Waiters do not sleep-poll: they block on a one-slot "wake"
list that every release pushes to, so Redis hands the lock's release to the longest waiter at once.
The lock is only an optimisation against a convoy on the database: PostgreSQL's row lock on the product
(SQLite's writer lock in the quick start) is the real arbiter, so a lock that expires mid-request still
cannot oversell.
"""

import logging
import random
import secrets
import time

from redis.exceptions import RedisError

from .. import keys, lua
from ..errors import LockBusy

# One attempt at the lock. KEYS[1] = lock, KEYS[2] = a key whose presence refuses the lock (or KEYS[1]:
# none), KEYS[3] = a key read atomically with the attempt (or KEYS[1]), KEYS[4] = the batch queue (or KEYS[1]),
# KEYS[5] = this buyer's reply list (or KEYS[1]). ARGV[1] = token, ARGV[2] = TTL (ms), ARGV[3] = this
# buyer's queue entry ('' when not queued), ARGV[4] = '1' to join the queue with this attempt,
# ARGV[5] = how many entries to take from the front of the queue when the lock is taken.
# Returns {state, value, entries...}: state 1 = taken (followed by the entries taken), 0 = held by
# another, -1 = refused (and out of the queue), 2 = refused but a holder is already serving the entry
# (wait for its reply), each with value = KEYS[3]'s value; 3 = a holder has answered, value = answer.
ACQUIRE_SCRIPT = lua.Script("""
if KEYS[5] ~= KEYS[1] then
  local answer = redis.call('LPOP', KEYS[5])
  if answer then
    return {3, answer}
  end
end
local value = redis.call('GET', KEYS[3])
if KEYS[2] ~= KEYS[1] and redis.call('EXISTS', KEYS[2]) == 1 then
  if ARGV[3] ~= '' and ARGV[4] ~= '1' and redis.call('LREM', KEYS[4], 1, ARGV[3]) == 0 then
    return {2, value}
  end
  return {-1, value}
end
if ARGV[4] == '1' then
  redis.call('RPUSH', KEYS[4], ARGV[3])
  redis.call('PEXPIRE', KEYS[4], 60000)
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if KEYS[4] ~= KEYS[1] and tonumber(ARGV[5]) > 0 then
    local batch = redis.call('LPOP', KEYS[4], ARGV[5])
    if batch then
      return {1, value, unpack(batch)}
    end
  end
  return {1, value}
end
return {0, value}
""")

# KEYS[1] = lock key, KEYS[2] = wake list; ARGV[1] = holder's token, ARGV[2] = wake list TTL (ms).
# Returns 1 when the token still held the lock (deleted, one waiter woken), 0 when it had lapsed.
RELEASE_SCRIPT = lua.Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
""")

# Longest single block on the wake list: a lock that lapses (its holder died) wakes nobody, so waiters
# look again at least this often. Jitter keeps them from retrying in lockstep.
MAX_BLOCK_SECONDS = 0.05
# A buyer queued in the line needs no polling: its answer lands on its reply list and every release
# wakes one waiter to take the lock and the next batch, so it only looks again for a lapsed lock. At
# 50 ms, 150 queued buyers made 3,000 attempts a second that found the lock held.
QUEUED_BLOCK_SECONDS = 0.25

log = logging.getLogger(__name__)


class LockRefused(Exception):
    """The lock's refuse_if key exists (for the product lock: the product is marked sold out)."""


class ProductLock:
    """`with ProductLock(redis, product_id, ttl_ms, wait_ms):` holds the product's lock or raises LockBusy.

    refuse_if: a key whose presence makes every attempt give up with LockRefused instead of waiting
    (buyers queued behind the lock learn of a sell-out at once). read_with: a key whose value is read
    atomically with the attempt that takes the lock, kept in read_value. Both in the same round trip.

    queue_entry: wait in the product's batch queue. The entry joins the queue with the first attempt, and
    acquire() returns either holding the lock (held) with up to `batch` entries taken from the front
    of the queue in `taken`, or, when a holder served the entry meanwhile, without it, with the
    holder's answer in `reply`. At the deadline an entry still in the queue is
    taken out (LockBusy); one a holder already took is waited for up to ttl_ms more.
    """

    def __init__(self, redis, product_id, ttl_ms, wait_ms, refuse_if=None, read_with=None,
                 queue_entry=None, reply_key=None, batch=0):
        self.redis = redis
        self.key = keys.lock(product_id)
        self.wake_key = keys.lock_wake(product_id)
        self.queue_key = keys.batch_queue(product_id)
        self.ttl_ms = ttl_ms
        self.wait_ms = wait_ms
        self.token = secrets.token_hex(16)
        self.waited_ms = 0.0
        self.read_value = None
        self.queue_entry, self.reply_key = queue_entry, reply_key
        self.held, self.reply = False, None
        self.batch, self.taken = batch, []
        self._started = self._deadline = None
        self._in_queue = False
        self.joined = False  # this buyer's entry went into the queue (a holder may have served it)
        self.unanswered = False  # a holder took the entry and never answered (see served_after_deadline)
        self._just_tried = False
        self._longest_block = MAX_BLOCK_SECONDS
        if queue_entry:
            # A block must end well before the socket's timeout, or a slow reply would read as Redis gone.
            timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
            self._longest_block = min(QUEUED_BLOCK_SECONDS, timeout / 3) if timeout else QUEUED_BLOCK_SECONDS
        self._attempt_keys = [self.key, refuse_if or self.key, read_with or self.key,
                              self.queue_key if queue_entry else self.key,
                              reply_key if queue_entry else self.key]

    def try_acquire(self):
        """One attempt, joining the queue on the first: True when taken (held) or answered (reply),
        False when another holds the lock; LockRefused when refuse_if exists."""
        if self._started is None:
            self._started = time.monotonic()
            self._deadline = self._started + self.wait_ms / 1000
        join = self.queue_entry is not None and not self._in_queue
        state, value, *taken = ACQUIRE_SCRIPT(
            self.redis, self._attempt_keys,
            [self.token, self.ttl_ms, self.queue_entry or "", "1" if join else "0",
                  self.batch if self.queue_entry else 0])
        self._in_queue = self._in_queue or (join and state != -1)
        self.joined = self.joined or self._in_queue
        self.waited_ms = (time.monotonic() - self._started) * 1000
        if state == 3:
            self.reply = value
            return True
        self.read_value = value
        if state == 1:
            self.held, self.taken = True, taken
            return True
        if state == -1:
            self._in_queue = False
            raise LockRefused()
        self._just_tried = True  # acquire() waits before its next attempt
        return False

    def acquire(self):
        """Take the lock within wait_ms (or get a reply from the queue), blocking between attempts."""
        wait_on = [self.reply_key, self.wake_key] if self.queue_entry else [self.wake_key]
        while True:
            if not self._just_tried and self.try_acquire():
                return self
            self._just_tried = False
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                if self.queue_entry and self.served_after_deadline():
                    return self
                raise LockBusy(waited_ms=self.waited_ms)
            block = min(remaining, self._longest_block * (0.5 + random.random()))
            popped = self.redis.blpop(wait_on, timeout=max(block, 0.001))
            if popped and self.queue_entry and popped[0].decode() == self.reply_key:
                self.reply = popped[1]
                self.waited_ms = (time.monotonic() - self._started) * 1000
                return self

    def past_deadline(self):
        """True once this buyer's wait_ms has run out."""
        return self._deadline is not None and time.monotonic() >= self._deadline

    def served_after_deadline(self):
        """At the deadline: leave the queue (False), or wait for the holder already serving us (True).

        If a holder took the entry but no answer came within ttl_ms, `unanswered` is set: only the
        database can then say whether that holder committed our hold.
        """
        if self.redis.lrem(self.queue_key, 1, self.queue_entry):
            self._in_queue = False
            return False
        until = time.monotonic() + self.ttl_ms / 1000
        while (left := until - time.monotonic()) > 0:
            popped = self.redis.blpop([self.reply_key], timeout=max(min(left, self._longest_block), 0.001))
            self.waited_ms = (time.monotonic() - self._started) * 1000
            if popped:
                self.reply = popped[1]
                return True
        self.unanswered = True
        return False

    def leave_queue(self):
        """Take this buyer's own entry out of the queue if it is still there; True when it was."""
        return bool(self.queue_entry and self.redis.lrem(self.queue_key, 1, self.queue_entry))

    def release(self):
        """Delete the lock only if this holder still owns it; True when it did."""
        self.held = False
        return bool(RELEASE_SCRIPT(self.redis, *self._release_arguments()))

    def queue_release(self, pipe):
        """Queue the release on a pipeline (run with lua.execute) that carries other commands too: one
        round trip. Returns what reads its reply: True when this holder still owned the lock."""
        self.held = False
        index = len(pipe.command_stack)
        RELEASE_SCRIPT.queue(pipe, *self._release_arguments())
        return lambda replies: bool(replies[index])

    def _release_arguments(self):
        return [self.key, self.wake_key], [self.token, self.ttl_ms]

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        try:
            self.release()
        except RedisError:
            # The work inside the lock is committed; the TTL frees the lock if Redis just went away.
            log.warning("could not release %s; it will lapse after %d ms", self.key, self.ttl_ms)
        return False
