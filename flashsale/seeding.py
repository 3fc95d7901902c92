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
