"""Product, Order (a hold while PENDING), Payment, and InventoryEvent, the append-only ledger."""

import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Interval,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .extensions import db

PENDING, CONFIRMING, CONFIRMED = "PENDING", "CONFIRMING", "CONFIRMED"
EXPIRED, RELEASED = "EXPIRED", "RELEASED"
ORDER_STATUSES = (PENDING, CONFIRMING, CONFIRMED, EXPIRED, RELEASED)
TERMINAL_STATUSES = (CONFIRMED, EXPIRED, RELEASED)
# Ledger events are named after the status the hold entered (HOLD_CREATED: it became PENDING).
HOLD_CREATED = "HOLD_CREATED"
EVENT_TYPES = (HOLD_CREATED, CONFIRMING, CONFIRMED, EXPIRED, RELEASED)
# Payment states: started (recorded before the gateway is called), then captured, refused, refunded
# (captured for a hold that ended otherwise, and given back), or voided (never taken; the gateway was
# told to refuse the key for good, so a late charge cannot land).
STARTED, CAPTURED, REFUSED, REFUNDED, VOIDED = "started", "captured", "refused", "refunded", "voided"
PAYMENT_STATES = (STARTED, CAPTURED, REFUSED, REFUNDED, VOIDED)


def _sql_in(values):
    return ", ".join(f"'{value}'" for value in values)


def new_hold_id():
    """An unguessable public token: knowing it is the capability to confirm or release a hold."""
    return secrets.token_urlsafe(18)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def coerce_compared_value(self, op, value):
        """`column - timedelta(...)` binds an interval, not a datetime."""
        if isinstance(value, timedelta):
            return Interval()
        return self

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
        CheckConstraint("admission_rate IS NULL OR admission_rate >= 1", name="admission_rate_positive"),
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
    # Opt-in waiting room (design section 10): buyers join a line and are admitted in order,
    # admission_rate shoppers per second (None: WAITING_ROOM_RATE from the configuration).
    waiting_room: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    admission_rate: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Order(db.Model):
    """A purchase; while PENDING it is a hold that counts against stock until hold_expires_at."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("quantity >= 1", name="quantity_positive"),
        CheckConstraint(f"status IN ({_sql_in(ORDER_STATUSES)})", name="status_known"),
        UniqueConstraint("idempotency_key"),
        # The hot query: units of one product that are confirmed or held and not yet expired.
        Index("ix_orders_product_status_expires", "product_id", "status", "hold_expires_at"),
        Index("ix_orders_product_email", "product_id", "customer_email"),
        # Holds not yet decided (PENDING or CONFIRMING) only: derived stock sums their units through
        # this, so its cost follows the holds in play, not the sale's history. PostgreSQL also covers
        # quantity and status, so the sum is an index-only scan.
        Index("ix_orders_live_product_expires", "product_id", "hold_expires_at",
              postgresql_where=text("status IN ('PENDING', 'CONFIRMING')"),
              sqlite_where=text("status IN ('PENDING', 'CONFIRMING')"),
              postgresql_include=["quantity", "status"]),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_hold_id)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    customer_email: Mapped[str] = mapped_column(String(254))
    quantity: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    hold_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When the shopper's confirmation was accepted (PENDING -> CONFIRMING), by the database clock.
    confirmation_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # A digest of the request that used idempotency_key: a replay with another body is refused.
    request_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Payment(db.Model):
    """The payment for one accepted confirmation, written before the gateway is called.

    One per hold: every attempt (the worker's, a reconciler's retry) charges the gateway with the same
    idempotency key, so a hold is never charged twice. `attempted_at` is the start of the current
    attempt, a lease of PAYMENT_TIMEOUT_SECONDS: a reconciler retries only once it has run out.
    """

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(f"state IN ({_sql_in(PAYMENT_STATES)})", name="state_known"),
        CheckConstraint("amount_cents >= 0", name="amount_not_negative"),
        UniqueConstraint("order_id"),
        UniqueConstraint("idempotency_key"),
        # Reconciliation reads the unsettled payments only.
        Index("ix_payments_unsettled", "attempted_at",
              postgresql_where=text("state = 'started'"), sqlite_where=text("state = 'started'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    amount_cents: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(80))
    state: Mapped[str] = mapped_column(String(16), default=STARTED)
    charge_ref: Mapped[str | None] = mapped_column(String(80), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class InventoryEvent(db.Model):
    """One stock movement: HOLD_CREATED (-qty), CONFIRMING and CONFIRMED (0), EXPIRED or RELEASED (+qty)."""

    __tablename__ = "inventory_events"
    __table_args__ = (
        CheckConstraint(f"type IN ({_sql_in(EVENT_TYPES)})", name="type_known"),
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
