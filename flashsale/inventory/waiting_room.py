"""The waiting room (design section 10): a fair line for the biggest drops, kept in Redis.

A shopper joins a product's line once per email and gets a ticket. Shoppers who join before the sale
opens get a random place among themselves (a score drawn from the system's CSPRNG, below every later
arrival's), so reloading the page first before the opening buys nothing; from the opening on, places
follow arrival order (a counter). Admission is a token bucket refilled at the product's rate (the shop
sets it): every join or poll of the line, from any web process, first admits the front of the line
for the tokens accrued since the last call, then answers. Admissions pause while the product is
marked sold out (units may still come back from lapsing holds) and stop for good once the line is
closed (every unit confirmed, `close`). An admitted shopper gets a short-lived, signed admission bound
to the product, the ticket and the email; hold creation requires it and uses it up.

All of it is one Lua script per call (join or view), with Redis's own clock, so every web process
agrees on the order and the rate, and a web restart loses nothing.
"""

import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from itsdangerous import BadSignature, URLSafeSerializer
from redis.exceptions import RedisError
from sqlalchemy import select

from .. import keys, lua
from ..errors import NotAdmitted, NotFound, Unavailable
from ..models import Product

TICKET_RE = re.compile(r"^t(\d{1,10})-[A-Za-z0-9_-]{24}$")
WAITS_KEPT = 2000  # recent waits kept for the dashboard's percentiles

# KEYS[1] line, [2] tickets, [3] emails, [4] state, [5] admitted, [6] unused admissions, [7] waits,
# [8] the product's sold-out mark. ARGV[1] 'join' or 'view', [2] ticket id (new one for a join),
# [3] email (join), [4] sale opens (epoch s), [5] sale ends, [6] admissions per second, [7] bucket
# capacity, [8] admission lifetime (s), [9] random score in [0, 1) for a join before the opening,
# [10] waits kept, [11] units available right now (derived stock, -1: unknown), which admissions
# outstanding (admitted, not used, not expired) may not exceed.
# Returns {ticket facts JSON or false, "admitted_at expires_at" or false, 0-based rank or false,
# closed reason or false, line length, admitted so far, now, 1 if this call made the ticket, the
# ticket id (for a join by an email already in line: its first ticket)}.
LINE_SCRIPT = lua.Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local starts, ends = tonumber(ARGV[4]), tonumber(ARGV[5])
local rate, cap, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local ticket, created = ARGV[2], 0
local closed = redis.call('HGET', KEYS[4], 'closed')
if ARGV[1] == 'join' then
  local existing = redis.call('HGET', KEYS[3], ARGV[3])
  if existing then
    ticket = existing
  else
    -- As text to the microsecond: cjson writes numbers with 14 digits (a tenth of a millisecond here).
    redis.call('HSET', KEYS[2], ticket, cjson.encode({email = ARGV[3], joined_at = string.format('%.6f', now)}))
    redis.call('HSET', KEYS[3], ARGV[3], ticket)
    created = 1
    if not closed and now < ends then
      local score
      if now < starts then
        score = tonumber(ARGV[9])
      else
        score = 1 + redis.call('HINCRBY', KEYS[4], 'seq', 1)
      end
      redis.call('ZADD', KEYS[1], score, ticket)
    end
  end
end
if not closed and now >= starts and now < ends then
  local tokens = tonumber(redis.call('HGET', KEYS[4], 'tokens') or '-1')
  local last = tonumber(redis.call('HGET', KEYS[4], 'refilled_at') or tostring(starts))
  if tokens < 0 then tokens = 0 end
  tokens = math.max(tokens, math.min(cap, tokens + math.max(0, now - last) * rate))
  local n = math.floor(tokens)
  local available = tonumber(ARGV[11])
  if available >= 0 then
    -- Never more shoppers holding a turn than units left to buy: the rest wait for a unit to come back.
    n = math.min(n, available - redis.call('ZCOUNT', KEYS[6], now, '+inf'))
  end
  if n > 0 and redis.call('EXISTS', KEYS[8]) == 0 then
    local popped = redis.call('ZPOPMIN', KEYS[1], n)
    for i = 1, #popped, 2 do
      local id = popped[i]
      redis.call('HSET', KEYS[5], id, string.format('%.6f %.6f', now, now + ttl))
      redis.call('ZADD', KEYS[6], now + ttl, id)
      local facts = cjson.decode(redis.call('HGET', KEYS[2], id))
      redis.call('LPUSH', KEYS[7], string.format('%.3f', now - math.max(tonumber(facts.joined_at), starts)))
    end
    tokens = tokens - #popped / 2
    if #popped > 0 then
      redis.call('HINCRBY', KEYS[4], 'admitted', #popped / 2)
      redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[10]) - 1)
    end
  end
  redis.call('HSET', KEYS[4], 'tokens', tostring(tokens), 'refilled_at', string.format('%.6f', now))
end
local admitted = redis.call('HGET', KEYS[5], ticket)
local rank = false
if not admitted then rank = redis.call('ZRANK', KEYS[1], ticket) or false end
return {redis.call('HGET', KEYS[2], ticket) or false, admitted or false, rank, closed or false,
        redis.call('ZCARD', KEYS[1]), redis.call('HGET', KEYS[4], 'admitted') or '0',
        string.format('%.6f', now), created, ticket}
""")


# KEYS[1] = the product's unused admissions (score: when each expires, by Redis's clock), ARGV[1] = ticket,
# ARGV[2] = the expiry the admission was signed with. Uses the admission up (ZREM) unless it expired by
# Redis's clock; returns 1 used now, 0 unknown or used before, -1 expired.
USE_ADMISSION_SCRIPT = lua.Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if tonumber(ARGV[2]) <= now then
  return -1
end
return redis.call('ZREM', KEYS[1], ARGV[1])
""")


@dataclass(frozen=True)
class Ticket:
    """A shopper's place in a product's line, as the contract shows it (plus a few facts for pages)."""

    id: str
    product_id: int
    email: str
    state: str  # waiting, admitted, sold_out, closed
    position: int | None
    estimated_wait_seconds: int | None
    admission: str | None
    admission_expires_at: datetime | None
    line_length: int
    admitted_total: int
    rate: int
    created: bool = False
    joined_at: datetime | None = None  # by Redis's clock, as are the two below
    admitted_at: datetime | None = None

    @property
    def poll_seconds(self):
        """How soon a waiting page should ask again: often near the front, rarely far back."""
        if self.state != "waiting":
            return 5
        return max(1, min(15, round((self.estimated_wait_seconds or 0) / 5)))


def ticket_product(ticket_id):
    """The product id a ticket id names, or NotFound for anything that cannot be a ticket."""
    match = TICKET_RE.match(ticket_id) if isinstance(ticket_id, str) else None
    if match is None:
        raise NotFound("No such ticket.")
    return int(match.group(1))


def email_digest(email):
    """What an admission carries of the email: enough to bind it, nothing to read back."""
    return hashlib.sha256(email.encode()).hexdigest()[:24]


class WaitingRoom:
    """The waiting rooms of every product, on one Redis; `secret` signs admissions (SECRET_KEY)."""

    def __init__(self, redis, secret, admission_seconds=90, default_rate=50, replicas=0):
        self.redis = redis
        # A join or an admission is answered only once this many replicas hold it (Redis WAIT), so a
        # failover keeps every place in line and every admission a shopper was shown.
        self.replicas = replicas
        self.signer = URLSafeSerializer(secret, salt="flashsale-admission")
        self.admission_seconds = admission_seconds
        self.default_rate = default_rate

    def rate(self, sale):
        """Admissions per second for this sale: the shop's, or the configured default."""
        return sale.admission_rate or self.default_rate

    def join(self, sale, email, available=None):
        """The ticket for `email` in the sale's line: a new place (created=True) or the one it has.

        available: the sale's units available now (derived stock); admissions outstanding never
        exceed it. None: no such cap (tests that hand out tokens themselves).
        """
        return self._call(sale, "join", f"t{sale.id}-{secrets.token_urlsafe(18)}", email, available)

    def view(self, sale, ticket_id, available=None):
        """The ticket as of now (admitting the front of the line first), or NotFound."""
        if ticket_product(ticket_id) != sale.id:
            raise NotFound("No such ticket.")
        return self._call(sale, "view", ticket_id, "", available)

    def _call(self, sale, mode, ticket_id, email, available):
        rate = self.rate(sale)
        reply, acked = lua.replicated(
            LINE_SCRIPT, self.redis,
            [keys.waiting_line(sale.id), keys.waiting_tickets(sale.id), keys.waiting_emails(sale.id),
             keys.waiting_state(sale.id), keys.waiting_admitted(sale.id), keys.waiting_unused(sale.id),
             keys.waiting_times(sale.id), keys.sold_out(sale.id)],
            [mode, ticket_id, email, sale.sale_starts_at.timestamp(), sale.sale_ends_at.timestamp(),
             rate, max(1, 2 * rate), self.admission_seconds,
             secrets.randbits(52) / 2**52, WAITS_KEPT, -1 if available is None else available],
            self.replicas)
        if self.replicas and acked < self.replicas:
            raise Unavailable("The line could not be saved safely just now; try again.")
        facts, admitted, rank, closed, length, admitted_total, now, created, ticket_id = reply
        if not facts:
            raise NotFound("No such ticket.")
        facts, now, ticket_id = json.loads(facts), float(now), ticket_id.decode()
        state, position, wait, admission, expires, admitted_at = "waiting", None, None, None, None, None
        if admitted:
            state = "admitted"
            admitted_epoch, expires_epoch = (float(x) for x in admitted.split())
            admitted_at = datetime.fromtimestamp(admitted_epoch, timezone.utc)
            expires = datetime.fromtimestamp(expires_epoch, timezone.utc)
            admission = self.signer.dumps([sale.id, ticket_id, email_digest(facts["email"]),
                                           round(expires_epoch, 3)])
        elif closed:
            state = closed.decode() if isinstance(closed, bytes) else closed
        elif now >= sale.sale_ends_at.timestamp() or rank is None:
            state = "closed"
        else:
            position = int(rank) + 1
            wait = math.ceil(position / rate + max(0.0, sale.sale_starts_at.timestamp() - now))
        return Ticket(ticket_id, sale.id, facts["email"], state, position, wait, admission, expires,
                      int(length), int(admitted_total), rate, bool(created),
                      datetime.fromtimestamp(float(facts["joined_at"]), timezone.utc), admitted_at)

    def use_admission(self, sale, email, admission):
        """Check a hold's admission and use it up; returns the ticket id (give_back() undoes it).

        Raises NotAdmitted when it is missing, forged, for another product or email, expired or used.
        """
        if not admission or not isinstance(admission, str) or len(admission) > 400:
            raise NotAdmitted("This sale has a waiting room: join the line and wait for your turn.")
        try:
            product_id, ticket_id, digest, expires = self.signer.loads(admission)
        except (BadSignature, ValueError, TypeError):
            raise NotAdmitted("This admission is not valid.") from None
        if product_id != sale.id or digest != email_digest(email):
            raise NotAdmitted("This admission is for another product or shopper.")
        # Used up once, and judged by Redis's clock, which stamped it: not this host's.
        used = USE_ADMISSION_SCRIPT(self.redis, [keys.waiting_unused(sale.id)], [ticket_id, expires])
        if used == 1:
            return ticket_id
        if used == -1:
            raise NotAdmitted("This admission has expired: your turn passed.", expired=True)
        raise NotAdmitted("This admission was already used.")

    def give_back(self, sale, admission):
        """Undo use_admission after a hold request that changed nothing (503): the shopper may retry."""
        product_id, ticket_id, _, expires = self.signer.loads(admission)
        self.redis.zadd(keys.waiting_unused(sale.id), {ticket_id: expires})

    def close(self, product_id, reason="sold_out"):
        """Close the line for good: no more admissions; everyone still waiting is told `reason`."""
        self.redis.hset(keys.waiting_state(product_id), "closed", reason)

    def stats(self, sale):
        """Line length, admissions (total, last 10 s, configured rate), waits and abandonment."""
        now = float(self.redis.time()[0])
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.waiting_line(sale.id))
        pipe.hget(keys.waiting_state(sale.id), "admitted")
        pipe.hget(keys.waiting_state(sale.id), "closed")
        pipe.lrange(keys.waiting_times(sale.id), 0, -1)
        pipe.zcount(keys.waiting_unused(sale.id), "-inf", now)
        pipe.zcount(keys.waiting_unused(sale.id), now, "+inf")
        pipe.hvals(keys.waiting_admitted(sale.id))
        length, admitted, closed, waits, abandoned, unused, admissions = pipe.execute()
        admitted = int(admitted or 0)
        recent = sum(1 for a in admissions if float(a.split()[0]) >= now - 10)
        return {"line_length": length, "admitted": admitted, "admitted_per_s_10s": recent / 10,
                "rate": self.rate(sale), "closed": closed.decode() if closed else None,
                "waits_s": sorted(float(w) for w in waits), "abandoned": abandoned,
                "admissions_outstanding": unused,
                "abandonment": round(abandoned / admitted, 4) if admitted else None}


def waiting_room_from_config(redis, config):
    """The waiting room with the app's SECRET_KEY and settings."""
    from ..extensions import replicas_to_wait

    return WaitingRoom(redis, config["SECRET_KEY"], config["WAITING_ROOM_ADMISSION_SECONDS"],
                       config["WAITING_ROOM_RATE"], replicas_to_wait(config))


def close_line_when_sold(session, redis, product_id):
    """After a confirmation: once every unit of a waiting-room product is confirmed, close its line,
    so everyone still waiting is told sold_out at once (best effort: Redis may be away)."""
    row = session.execute(select(Product.waiting_room, Product.confirmed_units, Product.total_stock)
                          .where(Product.id == product_id)).one_or_none()
    session.rollback()
    if row is None or not row.waiting_room or row.confirmed_units < row.total_stock:
        return False
    try:
        redis.hset(keys.waiting_state(product_id), "closed", "sold_out")
    except RedisError:
        return False
    return True

