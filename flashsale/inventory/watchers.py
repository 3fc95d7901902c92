"""Counting who watches a product: the distinct addresses that polled it in the last minute or two.

Each web process notes the address of every poll it answers (`saw`) and sends them with its next read
of the product's stock snapshot, where WATCHERS_LUA adds them to this minute's HyperLogLog and, once a
second, recounts this and the previous minute's. The pace (pacing.py) asks everyone to poll less often
once more are watching than the poll budget allows.
"""

from .. import keys

# count_watchers(state hash, this minute's HyperLogLog, last minute's, the current second (Redis's
# TIME), addresses) -> distinct addresses in the last one to two minutes, recounted once a second.
WATCHERS_LUA = """
local function count_watchers(state, this_minute, last_minute, second, addresses)
  if #addresses > 0 and redis.call('PFADD', this_minute, unpack(addresses)) == 1 then
    redis.call('PEXPIRE', this_minute, 180000)
  end
  local watch = redis.call('HMGET', state, 'sec', 'watchers')
  local watchers = tonumber(watch[2] or '0')
  if watch[1] ~= second then
    watchers = redis.call('PFCOUNT', this_minute, last_minute)
    redis.call('HSET', state, 'sec', second, 'watchers', watchers)
    redis.call('PEXPIRE', state, 600000)
  end
  return watchers
end
"""
MAX_ADDRESSES = 1000  # addresses sent with one read at most
_pending = {}  # product id -> addresses of the polls this process answered since its last read


def saw(product_id, address):
    """Note one poll's address, to be counted with this process's next read of the product."""
    _pending.setdefault(product_id, set()).add(address)


def take(product_id):
    """The addresses noted for a product since the last read (and forget them)."""
    return list(_pending.pop(product_id, ()))[:MAX_ADDRESSES]


def watcher_keys(product_id, minute):
    """WATCHERS_LUA's keys: the state, this minute's and the previous minute's HyperLogLogs."""
    return (keys.stock_watchers(product_id), keys.stock_watchers_seen(product_id, minute),
            keys.stock_watchers_seen(product_id, minute - 1))


def forget():
    """Drop the noted addresses (between tests)."""
    _pending.clear()
