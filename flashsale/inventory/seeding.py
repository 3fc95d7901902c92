"""Scenarios in seeds/*.yaml: products with sale windows relative to now, and optionally a crowd.

`seed` only ever adds: a product the database already holds (by slug) keeps its window, stock, holds,
orders, ledger and Redis marks, and any way it differs from the file is reported, not applied. `reset` is
the one verb that deletes: it starts a scenario's sale over, and refuses to delete paid orders unless told.
"""

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from redis.exceptions import RedisError
from sqlalchemy import delete, func, select

from .. import keys
from ..models import CONFIRMED, CONFIRMING, InventoryEvent, Order, Payment, Product
from . import catalog, movements, soldout

SEEDS_DIR = Path(__file__).resolve().parents[2] / "seeds"
DURATION_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text):
    """'90s', '30m', '1h', '-2h', '2d' or a number of seconds, as a timedelta."""
    match = DURATION_RE.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])


@dataclass
class Scenario:
    """A named set of products (and an optional crowd of buyers for `flask simulate`)."""

    name: str
    description: str
    products: list
    crowd: dict = field(default_factory=dict)


def scenario_names():
    """Names of every scenario file in seeds/."""
    return sorted(p.stem for p in SEEDS_DIR.glob("*.yaml"))


def load_scenario(name):
    """Read seeds/NAME.yaml, or raise LookupError listing the known names."""
    path = SEEDS_DIR / f"{name}.yaml"
    if not re.fullmatch(r"[a-z0-9-]+", name) or not path.exists():
        raise LookupError(f"no scenario {name!r}; known: {', '.join(scenario_names())}")
    data = yaml.safe_load(path.read_text())
    return Scenario(name, data.get("description", "").strip(), data["products"],
                    data.get("crowd") or {})


def describe(scenario):
    """What `flask seed --list` prints for a scenario: its products, stock, windows and crowd."""
    lines = [f"{scenario.name:<16} {scenario.description}"]
    for spec in scenario.products:
        lines.append(f"{'':<16}   {spec['slug']}: {spec['name']}, {int(spec['total_stock']):,} units at "
                     f"{int(spec['price_cents']) / 100:,.2f} {currency(spec).upper()}, "
                     f"{spec.get('max_per_customer', 1)} per customer, "
                     f"{window_text(spec.get('starts_in', 0), spec.get('duration', '1h'))}"
                     + (f", waiting room (admits {spec['admission_rate']}/s)" if spec.get("waiting_room")
                        and spec.get("admission_rate") else ", waiting room" if spec.get("waiting_room") else ""))
    crowd = scenario.crowd
    if crowd:
        arrival = crowd.get("arrival", "burst")
        if arrival == "ramp":
            arrival += f" over {crowd.get('ramp_seconds', 0)}s"
        shares = " / ".join(f"{int(round(float(crowd.get(k + '_share', 0)) * 100))}% {k}"
                            for k in ("confirm", "abandon", "release"))
        each = f" ({crowd['quantity']} units each)" if int(crowd.get("quantity", 1)) > 1 else ""
        lines.append(f"{'':<16}   crowd: {int(crowd.get('buyers', 0)):,} buyers for "
                     f"{crowd.get('product', scenario.products[0]['slug'])}{each}, {arrival}; "
                     f"winners {shares}; "
                     f"{int(round(float(crowd.get('retry_share', 0)) * 100))}% retry on 503")
    return "\n".join(lines)


def window_text(starts_in, duration):
    """'live now for 1h', 'opens in 10m for 2h', 'ended 1h ago', 'live for 30m more'."""
    start, length = parse_duration(starts_in), parse_duration(duration)
    end = start + length
    if end <= timedelta(0):
        return f"ended {_span(-end)} ago"
    if start > timedelta(0):
        return f"opens in {_span(start)} for {_span(length)}"
    if start == timedelta(0):
        return f"live now for {_span(length)}"
    return f"live for {_span(end)} more"


def _span(delta):
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"



# Holds whose money has moved or may be moving: a reset deletes them only when told in so many words.
PAID = (CONFIRMED, CONFIRMING)
COMPARED = ("name", "description", "price_cents", "currency", "total_stock", "max_per_customer",
            "waiting_room", "admission_rate")
CURRENCY_RE = re.compile(r"^[a-z]{3}$")


@dataclass(frozen=True)
class Difference:
    """One field in which the database's product is not what the scenario file says."""

    field: str
    database: object
    file: object

    def __str__(self):
        return f"{self.field} {self.database!r} in the database, {self.file!r} in the file"


@dataclass(frozen=True)
class Seeded:
    """One product of a scenario as seeding left it: created now, or already there and left as is."""

    slug: str
    created: bool
    total_stock: int
    sale_starts_at: datetime
    sale_ends_at: datetime
    differences: tuple = ()


@dataclass(frozen=True)
class ProductReset:
    """What a reset did to one product: the rows and Redis keys it deleted (none for a new product)."""

    product: Seeded
    holds: int = 0  # orders of every status
    paid: int = 0  # of which CONFIRMED or CONFIRMING
    payments: int = 0
    events: int = 0
    redis_keys: int = 0


@dataclass(frozen=True)
class ResetReport:
    """What a reset did, product by product, and the idempotency keys of the payments it deleted.

    The gateway may still hold charges under those keys; settling them there is the caller's business.
    """

    products: tuple
    payment_keys: tuple
    redis_error: str | None = None  # Redis was unreachable: marks and lines lapse by themselves


class PaidOrdersExist(Exception):
    """A reset would delete confirmed or confirming orders and was not told it may."""

    def __init__(self, paid):
        self.paid = paid  # {slug: {status: orders}}
        super().__init__("; ".join(f"{slug}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
                                   for slug, counts in paid.items()))


def product_fields(spec, now):
    """The columns a scenario's product sets, its sale window placed relative to `now`."""
    starts = now + parse_duration(spec.get("starts_in", 0))
    return {
        "name": spec["name"],
        "description": spec.get("description", "").strip(),
        "price_cents": int(spec["price_cents"]),
        "currency": currency(spec),
        "total_stock": int(spec["total_stock"]),
        "max_per_customer": int(spec.get("max_per_customer", 1)),
        "sale_starts_at": starts,
        "sale_ends_at": starts + parse_duration(spec.get("duration", "1h")),
        "waiting_room": bool(spec.get("waiting_room", False)),
        "admission_rate": int(spec["admission_rate"]) if spec.get("admission_rate") else None,
    }


def currency(spec):
    """A scenario product's ISO 4217 currency, lower-case (default usd), or ValueError."""
    code = str(spec.get("currency", "usd")).strip().lower()
    if not CURRENCY_RE.match(code):
        raise ValueError(f"{spec.get('slug')}: currency {spec.get('currency')!r} is not an ISO 4217 code")
    return code


def differences(product, spec):
    """How a product in the database differs from its scenario spec.

    Windows are placed relative to the moment of seeding, so only their length can be compared.
    """
    wanted = product_fields(spec, product.sale_starts_at)
    found = [Difference(name, getattr(product, name), wanted[name])
             for name in COMPARED if getattr(product, name) != wanted[name]]
    length, wanted_length = (product.sale_ends_at - product.sale_starts_at,
                             wanted["sale_ends_at"] - wanted["sale_starts_at"])
    if length != wanted_length:
        found.append(Difference("duration", _span(length), _span(wanted_length)))
    return tuple(found)


def seed(session, redis, scenario, now=None):
    """Create the scenario's missing products; leave every one already there exactly as it is."""
    now = now or datetime.now(timezone.utc)
    existing = _products(session, scenario)
    created, outcome = [], []
    for spec in scenario.products:
        product = existing.get(spec["slug"])
        if product is None:
            product = Product(slug=spec["slug"], **product_fields(spec, now))
            session.add(product)
            created.append(product)
            outcome.append(_seeded(product, created=True))
        else:
            outcome.append(_seeded(product, created=False, differences=differences(product, spec)))
    if not created:
        session.rollback()  # nothing to write; ends the read (which on SQLite holds the writer lock)
        return outcome
    session.flush()
    new_ids = [product.id for product in created]
    session.commit()
    catalog.forget()
    # A new product may reuse the id of one deleted without its Redis keys: drop any stale mark.
    soldout.stock_returned(redis, new_ids)
    movements.forget(redis, new_ids)  # and the sales list's order: it has new products
    return outcome


def reset(session, redis, scenario, now=None, delete_paid=False):
    """Start a scenario's sale over: delete its products' holds, orders, payments and ledger, then set the
    file's fields with windows from now. Refuses with PaidOrdersExist on paid orders unless delete_paid."""
    now = now or datetime.now(timezone.utc)
    existing, statuses = _lock_sale(session, scenario)
    slugs = {product.id: slug for slug, product in existing.items()}
    holds, paid = {}, {}
    for product_id, status in statuses:
        holds[product_id] = holds.get(product_id, 0) + 1
        if status in PAID:
            counts = paid.setdefault(slugs[product_id], {})
            counts[status] = counts.get(status, 0) + 1
    if paid and not delete_paid:
        session.rollback()
        raise PaidOrdersExist(paid)
    events, payments = _delete_history(session, list(slugs))
    products = []
    for spec in scenario.products:
        product = existing.get(spec["slug"])
        if product is None:
            product = Product(slug=spec["slug"])
            session.add(product)
        for name, value in product_fields(spec, now).items():
            setattr(product, name, value)
        product.confirmed_units = 0  # the counter of confirmed units goes with its orders
        products.append(product)
    session.flush()
    done = [ProductReset(_seeded(product, created=product.id not in slugs), holds=holds.get(product.id, 0),
                         paid=sum(paid.get(product.slug, {}).values()),
                         payments=sum(1 for product_id, _ in payments if product_id == product.id),
                         events=events.get(product.id, 0))
            for product in products]
    product_ids = [product.id for product in products]
    session.commit()
    catalog.forget()
    try:
        done = [replace(item, redis_keys=clear_product_keys(redis, product_id))
                for item, product_id in zip(done, product_ids, strict=True)]
        movements.forget(redis, product_ids)  # gone with the keys above; the sales list's order too
    except RedisError as error:
        return ResetReport(tuple(done), tuple(key for _, key in payments), f"{error.__class__.__name__}: {error}")
    return ResetReport(tuple(done), tuple(key for _, key in payments))


def _lock_sale(session, scenario):
    """Row-lock a scenario's products and their orders; returns ({slug: product}, [(product_id, status)]).

    Products first, then orders, as every transaction that writes a hold does (ledger.py): once the
    products are locked no hold can be placed, confirmed, released or expired, so what the reset counts
    is what it deletes.
    """
    existing = _products(session, scenario, lock=True)
    return existing, _lock_orders(session, [product.id for product in existing.values()])


def _lock_orders(session, product_ids):
    """Row-lock the products' orders; returns (product_id, status) of each."""
    return session.execute(select(Order.product_id, Order.status)
                           .where(Order.product_id.in_(product_ids)).with_for_update()).all()


def _delete_history(session, product_ids):
    """Delete the products' ledger, payments and orders (in foreign-key order).

    Returns ({product_id: events deleted}, [(product_id, payment idempotency key)]).
    """
    events = dict(session.execute(
        select(InventoryEvent.product_id, func.count()).where(InventoryEvent.product_id.in_(product_ids))
        .group_by(InventoryEvent.product_id)).all())
    payments = session.execute(
        select(Order.product_id, Payment.idempotency_key).join(Order, Payment.order_id == Order.id)
        .where(Order.product_id.in_(product_ids)).order_by(Payment.id)).all()
    their_orders = select(Order.id).where(Order.product_id.in_(product_ids))
    for statement in (delete(InventoryEvent).where(InventoryEvent.product_id.in_(product_ids)),
                      delete(Payment).where(Payment.order_id.in_(their_orders)),
                      delete(Order).where(Order.product_id.in_(product_ids))):
        session.execute(statement.execution_options(synchronize_session=False))
    return events, payments


def clear_product_keys(redis, product_id):
    """Delete a product's sold-out mark, line and line replies; returns how many keys went.

    The lock and its wake list stay: a holder may own the lock this instant (queued behind the reset's
    row lock), and deleting it would let a second holder in beside it; it lapses within LOCK_TTL_MS. The
    stock generation is bumped, never deleted, so a request that read it before the reset cannot write a
    sold-out mark from what it saw of the old sale.
    """
    kept = {keys.lock(product_id), keys.lock_wake(product_id), keys.stock_generation(product_id)}
    doomed = [key for key in redis.scan_iter(match=keys.product_pattern(product_id), count=1000)
              if key.decode() not in kept]
    if doomed:
        redis.delete(*doomed)
    soldout.stock_returned(redis, [product_id])
    return len(doomed)


def _products(session, scenario, lock=False):
    """The scenario's products already in the database, by slug (row-locked in id order if asked)."""
    query = (select(Product).where(Product.slug.in_([spec["slug"] for spec in scenario.products]))
             .order_by(Product.id).execution_options(populate_existing=True))
    if lock:
        query = query.with_for_update()
    return {product.slug: product for product in session.execute(query).scalars()}


def _seeded(product, created, differences=()):
    return Seeded(product.slug, created, product.total_stock, product.sale_starts_at, product.sale_ends_at,
                  differences)
