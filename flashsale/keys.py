"""Every Redis key flashsale uses, built in one place.

flashsale runs on one Redis primary (made highly available by Sentinel, design section 13), not on Redis
Cluster: the metrics and sold-out gate scripts touch keys of several slots and RQ does not support
Cluster. A product's keys share the hash tag `{product:ID}` so that one product's keys (and its
scripts) could still move together to another primary: the plan in docs/production.md.
"""

PREFIX = "fs"


def product_tag(product_id):
    """The hash tag that keeps one product's keys together (one slot, one server)."""
    return f"{PREFIX}:{{product:{product_id}}}"


def product_pattern(product_id):
    """A SCAN pattern matching every key of one product (braces are not glob syntax, so no escaping)."""
    return f"{product_tag(product_id)}:*"


def lock(product_id):
    """The per-product hold lock (value: the holder's random token)."""
    return f"{product_tag(product_id)}:lock"


def lock_wake(product_id):
    """A one-slot list the lock's releaser pushes to, waking the longest waiter (BLPOP)."""
    return f"{product_tag(product_id)}:lock:wake"


def batch_queue(product_id):
    """Requests of buyers waiting for the product's lock, served in batches by its holder (a list)."""
    return f"{product_tag(product_id)}:batch:queue"


def batch_reply(product_id, ticket):
    """Where the lock's holder puts the outcome of one buyer's request from the batch queue."""
    return f"{product_tag(product_id)}:batch:reply:{ticket}"


def sold_out(product_id):
    """The fast sold-out mark: present means 'no unit was free a moment ago'."""
    return f"{product_tag(product_id)}:sold_out"


def stock_generation(product_id):
    """Bumped whenever stock comes back, so a stale sold-out mark is never written."""
    return f"{product_tag(product_id)}:stock_gen"


def stock_snapshot(product_id):
    """The product's stock snapshot (a hash): its public JSON, total, confirmed and paying units, built."""
    return f"{product_tag(product_id)}:snapshot"


def stock_snapshot_held(product_id):
    """Units of the product's PENDING holds by expiry second (a hash): a bucket counts until its second."""
    return f"{product_tag(product_id)}:snapshot:held"


def stock_snapshot_rebuild(product_id):
    """Taken (SET NX) by the one poll that rebuilds a missing or old snapshot from the database."""
    return f"{product_tag(product_id)}:snapshot:rebuild"


def stock_watchers(product_id):
    """How many are watching the product (a hash: the second it was counted, the count)."""
    return f"{product_tag(product_id)}:snapshot:watchers"


def stock_watchers_seen(product_id, minute):
    """Addresses that polled the product in one minute (epoch minutes), a HyperLogLog."""
    return f"{product_tag(product_id)}:snapshot:seen:{minute}"


def catalog_order():
    """Every product's id in the sales list's order (a JSON list), kept briefly for GET /api/products."""
    return f"{PREFIX}:catalog:order"


def hold_limit(identity, amount, seconds):
    """One fixed-window counter of the hold route's rate limits (web/hold_limits.py); identity is
    "address:..." or "email:...", and the window's TTL is `seconds`."""
    return f"{PREFIX}:holdlimit:{amount}/{seconds}:{identity}"


def sweep_tick():
    """Claimed once per SWEEP_SECONDS by whichever worker enqueues the sweeper."""
    return f"{PREFIX}:sweep:tick"


def expiry_slot(second):
    """Set of the hold ids that lapse in the second ending at `second` (epoch), for its expiry job."""
    return f"{PREFIX}:expiry:{second}"


def metrics(name):
    """A metrics key (counters, latency rings, time series) shared by every process."""
    return f"{PREFIX}:metrics:{name}"


def last_audit():
    """The last `flask audit`'s result (a JSON string: when, scope, passed, breaches per invariant)."""
    return f"{PREFIX}:audit:last"


def stripe_event(event_id):
    """Set (NX, for days) once a Stripe webhook event was handled: a replay of it changes nothing."""
    return f"{PREFIX}:stripe:event:{event_id}"


def waiting_line(product_id):
    """The waiting room's line: a sorted set of ticket ids, front first (score: place in line)."""
    return f"{product_tag(product_id)}:wr:line"


def waiting_tickets(product_id):
    """Every ticket of the product's waiting room: ticket id -> its facts (a hash of JSON)."""
    return f"{product_tag(product_id)}:wr:tickets"


def waiting_emails(product_id):
    """One place per email: email -> ticket id."""
    return f"{product_tag(product_id)}:wr:emails"


def waiting_state(product_id):
    """The line's state (a hash): arrival counter, admission token bucket, admitted count, closed."""
    return f"{product_tag(product_id)}:wr:state"


def waiting_admitted(product_id):
    """Admitted tickets: ticket id -> "admitted_at expires_at" (a hash)."""
    return f"{product_tag(product_id)}:wr:admitted"


def waiting_unused(product_id):
    """Admissions not used yet, by expiry (a sorted set): the expired ones were abandoned."""
    return f"{product_tag(product_id)}:wr:unused"


def waiting_times(product_id):
    """Recent waits from joining (or the opening) to admission, in seconds (a bounded list)."""
    return f"{product_tag(product_id)}:wr:waits"

