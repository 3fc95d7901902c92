"""Scenarios in seeds/*.yaml: products with sale windows relative to now, and optionally a crowd."""

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from sqlalchemy import delete, select

from .inventory import catalog, soldout
from .models import InventoryEvent, Order, Product

SEEDS_DIR = Path(__file__).resolve().parent.parent / "seeds"
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
                     f"{int(spec['price_cents']) / 100:,.2f}, {spec.get('max_per_customer', 1)} per customer, "
                     f"{window_text(spec.get('starts_in', 0), spec.get('duration', '1h'))}")
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


def seed(session, redis, scenario, now=None):
    """Load a scenario's products afresh: same slugs, windows from now, no orders. Idempotent."""
    now = now or datetime.now(timezone.utc)
    seeded = []
    for spec in scenario.products:
        product = session.execute(
            select(Product).where(Product.slug == spec["slug"])).scalar_one_or_none()
        if product is None:
            product = Product(slug=spec["slug"])
            session.add(product)
        else:
            # A re-seed starts the sale over: its holds, orders and ledger go with the old run.
            session.execute(delete(InventoryEvent).where(InventoryEvent.product_id == product.id))
            session.execute(delete(Order).where(Order.product_id == product.id))
            product.confirmed_units = 0  # the counter of confirmed units goes with its orders
        starts = now + parse_duration(spec.get("starts_in", 0))
        product.name = spec["name"]
        product.description = spec.get("description", "").strip()
        product.price_cents = int(spec["price_cents"])
        product.total_stock = int(spec["total_stock"])
        product.max_per_customer = int(spec.get("max_per_customer", 1))
        product.sale_starts_at = starts
        product.sale_ends_at = starts + parse_duration(spec.get("duration", "1h"))
        seeded.append(product)
    session.commit()
    catalog.forget()
    soldout.stock_returned(redis, [p.id for p in seeded])
    return seeded
