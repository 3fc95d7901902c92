"""Product, Order (a hold while PENDING) and InventoryEvent, the append-only ledger."""

import secrets
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .extensions import db

PENDING, CONFIRMED, EXPIRED, RELEASED = "PENDING", "CONFIRMED", "EXPIRED", "RELEASED"
ORDER_STATUSES = (PENDING, CONFIRMED, EXPIRED, RELEASED)
HOLD_CREATED = "HOLD_CREATED"
EVENT_TYPES = (HOLD_CREATED, CONFIRMED, EXPIRED, RELEASED)


def new_hold_id():
    """An unguessable public token: knowing it is the capability to confirm or release a hold."""
    return secrets.token_urlsafe(18)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL on SQLite hands back the stored text
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Product(db.Model):
    """Something on sale: a fixed stock sold within a window, at most max_per_customer each."""

    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("total_stock >= 0", name="total_stock_not_negative"),
        CheckConstraint("price_cents >= 0", name="price_not_negative"),
        CheckConstraint("max_per_customer >= 1", name="max_per_customer_positive"),
        CheckConstraint("sale_ends_at > sale_starts_at", name="sale_window_ordered"),
        CheckConstraint("confirmed_units >= 0", name="confirmed_units_not_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    price_cents: Mapped[int] = mapped_column(Integer)
    total_stock: Mapped[int] = mapped_column(Integer)
    max_per_customer: Mapped[int] = mapped_column(Integer, default=1)
    sale_starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sale_ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    # Units of CONFIRMED orders, moved only by the confirming transaction (ledger.transition_hold) and
    # checked against the orders by `flask audit`: derived stock reads it instead of summing history.
    confirmed_units: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Order(db.Model):
    """A purchase; while PENDING it is a hold that counts against stock until hold_expires_at."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("quantity >= 1", name="quantity_positive"),
        CheckConstraint(
            "status IN ('PENDING', 'CONFIRMED', 'EXPIRED', 'RELEASED')", name="status_known"
        ),
        UniqueConstraint("idempotency_key"),
        # The hot query: units of one product that are confirmed or held and not yet expired.
        Index("ix_orders_product_status_expires", "product_id", "status", "hold_expires_at"),
        Index("ix_orders_product_email", "product_id", "customer_email"),
        # Live holds only: derived stock sums PENDING rows through this, so its cost follows the
        # holds that can still be live, not the sale's history (PostgreSQL also covers quantity).
        Index("ix_orders_pending_product_expires", "product_id", "hold_expires_at",
              postgresql_where=text("status = 'PENDING'"), sqlite_where=text("status = 'PENDING'"),
              postgresql_include=["quantity"]),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_hold_id)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    customer_email: Mapped[str] = mapped_column(String(254))
    quantity: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    hold_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # A digest of the request that used idempotency_key: a replay with another body is refused.
    request_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)


class InventoryEvent(db.Model):
    """One stock movement: HOLD_CREATED (-qty), CONFIRMED (0), EXPIRED or RELEASED (+qty)."""

    __tablename__ = "inventory_events"
    __table_args__ = (
        CheckConstraint(
            "type IN ('HOLD_CREATED', 'CONFIRMED', 'EXPIRED', 'RELEASED')", name="type_known"
        ),
        Index("ix_inventory_events_order_id", "order_id"),
        Index("ix_inventory_events_product_id", "product_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    type: Mapped[str] = mapped_column(String(16))
    delta: Mapped[int] = mapped_column(Integer)
    event_metadata: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
