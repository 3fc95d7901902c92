"""Product, Order (a hold while PENDING), Payment, the InventoryEvent ledger, the outbox, the fake gateway's record."""

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
        CheckConstraint("length(currency) = 3 AND currency = lower(currency)", name="currency_iso"),
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
    # ISO 4217, lower-case (as Stripe spells it): what price_cents is counted in.
    currency: Mapped[str] = mapped_column(String(3), default="usd", server_default="usd")


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
        # The holds placed in a window (`flask audit --since`) and the dashboard's latest holds.
        Index("ix_orders_created_at", "created_at"),
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
        UniqueConstraint("intent_id"),
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
    currency: Mapped[str] = mapped_column(String(3), default="usd", server_default="usd")
    # A payment by PaymentIntent (inventory/intents.py): the intent's id, recorded before any call that
    # can authorise or capture it; its status as last read; its client secret while the shopper can act
    # (until action_deadline); the last failed attempt's message; the intents it replaced, canceled.
    intent_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    intent_status: Mapped[str | None] = mapped_column(String(40), nullable=True)
    client_secret: Mapped[str | None] = mapped_column(String(255), nullable=True)
    action_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    replaced_intents: Mapped[list | None] = mapped_column(JSON, nullable=True)


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


# The shop's events (design section 12) and where each stands at each endpoint.
ORDER_CONFIRMED, ORDER_REFUNDED, SALE_SOLD_OUT = "order.confirmed", "order.refunded", "sale.sold_out"
WEBHOOK_EVENT_TYPES = (ORDER_CONFIRMED, ORDER_REFUNDED, SALE_SOLD_OUT)
# A delivery is pending (not yet taken, in flight, or failed and due again), delivered, or failed (its
# retries ran out: only `flask webhooks retry` sends it again).
DELIVERY_PENDING, DELIVERED, DELIVERY_FAILED = "pending", "delivered", "failed"
DELIVERY_STATES = (DELIVERY_PENDING, DELIVERED, DELIVERY_FAILED)


class WebhookEvent(db.Model):
    """The outbox: one event for the shop, written in the transaction of the change that causes it.

    `webhook_id` is the Standard Webhooks message id, the same on every attempt at every endpoint; `body`
    is the exact JSON text POSTed, fixed when the event is written so every retry signs the same bytes.
    `ordering_key` (the hold's id, or the sale's) orders deliveries: per endpoint, one key's events go in
    id order. `fanned_out` is set once the event has a delivery row per endpoint configured then.
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        CheckConstraint(f"type IN ({_sql_in(WEBHOOK_EVENT_TYPES)})", name="type_known"),
        UniqueConstraint("webhook_id"),
        Index("ix_webhook_events_hold_id", "hold_id"),
        Index("ix_webhook_events_unfanned", "id", postgresql_where=text("NOT fanned_out"),
              sqlite_where=text("NOT fanned_out")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    hold_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    product_id: Mapped[int] = mapped_column(Integer)
    ordering_key: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class WebhookDelivery(db.Model):
    """One event owed to one endpoint: pending until a 2xx answer, retried on a schedule until then; due
    only once the delivery it comes `after_id` (an earlier event of its hold, to its endpoint) is delivered.

    `next_attempt_at` is when it is next due; taking it for an attempt moves it a lease ahead, so a worker
    killed mid-attempt leaves it due again once the lease runs out (the sweep re-enqueues it).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(f"state IN ({_sql_in(DELIVERY_STATES)})", name="state_known"),
        UniqueConstraint("event_id", "endpoint"),
        Index("ix_webhook_deliveries_due", "next_attempt_at",
              postgresql_where=text("state = 'pending'"), sqlite_where=text("state = 'pending'")),
        Index("ix_webhook_deliveries_endpoint_key", "endpoint", "ordering_key", "event_id"),
        # The dashboard counts the given-up deliveries every poll: few, found without a scan.
        Index("ix_webhook_deliveries_failed", "endpoint",
              postgresql_where=text("state = 'failed'"), sqlite_where=text("state = 'failed'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id"))
    endpoint: Mapped[str] = mapped_column(String(2000))
    ordering_key: Mapped[str] = mapped_column(String(64))
    # The delivery of the same ordering key to the same endpoint just before this one (None: the first):
    # this one is due only once that one is delivered.
    after_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=DELIVERY_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# The fake payment gateway's charge statuses (gateways/__init__.py names them for every gateway).
FAKE_CHARGE_STATUSES = ("captured", "refused", "voided", "refunded")


class FakeGatewayCharge(db.Model):
    """The fake payment gateway's own record (gateways/fake.py): one row per idempotency key that reached it.

    It stands for an external provider's books, so the fake writes it in transactions of its own, committed
    before it answers, never in the engine's: a rollback of the engine's work cannot undo a charge. Kept in
    the database, not Redis, so a Redis failover that loses the last writes cannot lose a charge either.
    `status` is None while calls for the key arrived but none was recorded (a fake timeout).
    """

    __tablename__ = "fake_gateway_charges"
    __table_args__ = (
        CheckConstraint(f"status IS NULL OR status IN ({_sql_in(FAKE_CHARGE_STATUSES)})", name="status_known"),
        UniqueConstraint("charge_id"),
    )

    idempotency_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # fault injection counts them
    charge_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    amount_cents: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reference: Mapped[str] = mapped_column(String(64), default="", server_default="")
