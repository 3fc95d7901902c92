"""Finding products by id or slug, with a short in-process cache for the hot path's sale checks."""

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, select

from ..errors import NotFound
from ..models import Product

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
MAX_ID = 2**31 - 1  # PostgreSQL integer: a bigger id is unknown, never an overflow error
# How long a process trusts what it read of a product. Under the lock the database decides the window and
# the limits, and the sold-out gate answers only from the mark, so a stale read never sells what the
# database would refuse. Kept short because nothing tells other processes that a product changed (a
# re-seed, an edit): ten seconds, tried for sales spread over 100 products, kept refusing buyers by a
# re-created product's old limits in a long-lived web process.
CACHE_SECONDS = 2.0

_cache = {}
_ids = {}  # ref -> (monotonic expiry, product id)
MAX_IDS = 10_000


@dataclass(frozen=True)
class SaleInfo:
    """What the hot path needs to know about a product before it takes the lock."""

    id: int
    slug: str
    total_stock: int
    max_per_customer: int
    sale_starts_at: datetime
    sale_ends_at: datetime
    waiting_room: bool = False
    admission_rate: int | None = None


def _parsed(ref):
    """(is an id, the id or slug) of a product reference, or NotFound if it cannot name one."""
    ref = str(ref)
    if ref.isascii() and ref.isdigit():
        if len(ref) > 10 or int(ref) > MAX_ID:
            raise NotFound()
        return True, int(ref)
    if not SLUG_RE.match(ref):
        raise NotFound()
    return False, ref


def product_filter(ref):
    """A WHERE clause for a product reference (an id or a slug), or NotFound if it cannot name one."""
    by_id, value = _parsed(ref)
    return Product.id == value if by_id else Product.slug == value


def find_product(session, ref):
    """The Product named by `ref` (id or slug), or NotFound."""
    product = session.execute(select(Product).where(product_filter(ref))).scalar_one_or_none()
    if product is None:
        raise NotFound("No such product.")
    return product


def product_id(session, ref):
    """The id of the product `ref` names, remembered by this process for CACHE_SECONDS (a watcher's
    poll reads the database once per product every CACHE_SECONDS, not per poll; not for good: a
    product deleted and made again under its slug has a new id)."""
    hit = _ids.get(ref)
    if hit is None or hit[0] <= time.monotonic():
        if len(_ids) >= MAX_IDS:
            _ids.clear()
        hit = _ids[ref] = (time.monotonic() + CACHE_SECONDS, find_product(session, ref).id)
        session.rollback()
    return hit[1]


def cached_product_id(ref):
    """The id product_id resolved for `ref` less than CACHE_SECONDS ago, else None (no database)."""
    hit = _ids.get(ref)
    return hit[1] if hit is not None and hit[0] > time.monotonic() else None


def forget_id(ref):
    """Forget what `ref` named (its product is gone)."""
    _ids.pop(ref, None)


def sale_info(session, ref):
    """SaleInfo for `ref`, cached for CACHE_SECONDS; the transaction re-checks what matters under lock.

    The read that refreshes `ref` refreshes, in the same query, every product this process holds whose
    read is past half its life: over a sale of 100 products each process then reads the catalog about
    once per CACHE_SECONDS instead of once per product (which sent a quarter of the buyers through Flask).
    Taking the half-expired too merges products first read at different moments into one refresh. And
    the read for a product the process has not read yet also brings every other sale open now (or
    within OPENING_SOON_SECONDS) that it has not read, so a process meets a drop of 100 products with
    one read, not one per product, each through Flask.
    """
    ref, now = str(ref), time.monotonic()
    hit = _cache.get(ref)
    if hit and hit[0] > now:
        return hit[1]
    named = product_filter(ref)
    due = now + CACHE_SECONDS / 2
    cached = list(_cache.values())
    wanted = or_(named, Product.id.in_(sorted({info.id for expires, info in cached if expires <= due})[:MAX_REFRESH]))
    if hit is None:
        wall = datetime.now(timezone.utc)
        wanted = or_(wanted, Product.id.in_(
            select(Product.id).where(Product.sale_ends_at > wall,
                                     Product.sale_starts_at <= wall + timedelta(seconds=OPENING_SOON_SECONDS),
                                     Product.id.notin_({info.id for _, info in cached}))
            .order_by(Product.sale_starts_at).limit(MAX_REFRESH)))
    rows = session.execute(select(*SALE_COLUMNS).where(wanted)).all()
    expires = time.monotonic() + CACHE_SECONDS
    found = None
    for row in rows:
        info = SaleInfo(*row[:6], bool(row.waiting_room), row.admission_rate)
        _cache[str(info.id)] = _cache[info.slug] = (expires, info)
        if _names(ref, info):
            found = info
    if found is None:
        raise NotFound("No such product.")
    _cache[ref] = (expires, found)
    return found


SALE_COLUMNS = (Product.id, Product.slug, Product.total_stock, Product.max_per_customer, Product.sale_starts_at,
                Product.sale_ends_at, Product.waiting_room, Product.admission_rate)
OPENING_SOON_SECONDS = 60


def _names(ref, product):
    """True when `ref` (an id or a slug, as product_filter reads it) names `product` (a Product or SaleInfo)."""
    by_id, value = _parsed(ref)
    return (product.id if by_id else product.slug) == value


def cached_sale_info(ref):
    """SaleInfo for `ref` as this process last read it, or None: let Flask read it (no database here).

    Past CACHE_SECONDS the first caller gets None, and so reads it through Flask (sale_info, which
    refreshes every expired product at once); for REFRESH_GRACE seconds after that, while that read is
    in flight, every caller keeps the old reads, so that a process answering thousands of buyers a
    second sends one of them through Flask when its reads expire rather than every buyer arriving
    until the new read lands.
    """
    global _refreshing_until
    hit = _cache.get(ref)
    if hit is None:
        return None
    now = time.monotonic()
    if hit[0] > now or _refreshing_until > now:
        return hit[1]
    _refreshing_until = now + REFRESH_GRACE
    return None


REFRESH_GRACE = 1.0
MAX_REFRESH = 1000  # products refreshed with one read, at most
_refreshing_until = 0.0  # monotonic time until which a read through Flask (refreshing every expired one) is in flight


def forget():
    """Drop cached sale info and ids (after seeding, and between tests)."""
    global _refreshing_until
    _cache.clear()
    _ids.clear()
    _refreshing_until = 0.0
