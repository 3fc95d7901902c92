"""Stock and buyers' checks (invariants 1, 5, 6) at the audit's instant, with stock.py's rule of what
counts against stock (the same expression the hot path's SQL is rendered from)."""

from sqlalchemy import and_, func, select

from ...models import Order, Product
from ...serialise import mask_email
from ..stock import counts_against_stock
from .findings import Breach, check

OVERSELL, IDEMPOTENCY, LIMIT = "1 no oversell", "5 idempotency", "6 per-customer limit"


@check(OVERSELL)
def oversold(view):
    """Sales whose confirmed, paying and live held units exceed their stock at the audit's instant."""
    taken = func.coalesce(func.sum(Order.quantity), 0)
    query = (select(Product.slug, Product.total_stock, taken.label("taken"))
             .outerjoin(Order, and_(Order.product_id == Product.id, counts_against_stock(view.at)))
             .where(view.products())
             .group_by(Product.id, Product.slug, Product.total_stock)
             .having(taken > Product.total_stock))
    count, rows = view.offending(query)
    return count, [Breach(OVERSELL, row.slug, f"{row.taken} units taken of {row.total_stock}") for row in rows]


@check(IDEMPOTENCY)
def shared_idempotency_keys(view):
    """Idempotency-Keys that made more than one hold."""
    holds = func.count()
    query = (select(Order.idempotency_key, holds.label("holds"))
             .where(Order.idempotency_key.is_not(None), view.holds())
             .group_by(Order.idempotency_key).having(holds > 1))
    count, rows = view.offending(query)
    return count, [Breach(IDEMPOTENCY, row.idempotency_key, f"{row.holds} holds share this key") for row in rows]


@check(LIMIT)
def customers_over_the_limit(view):
    """Buyers whose confirmed, paying and live held units of a sale exceed its max_per_customer."""
    taken = func.sum(Order.quantity)
    query = (select(Product.slug, Order.customer_email, taken.label("taken"), Product.max_per_customer)
             .join(Product, Product.id == Order.product_id)
             .where(counts_against_stock(view.at), view.of_products(Order.product_id))
             .group_by(Product.slug, Order.customer_email, Product.max_per_customer)
             .having(taken > Product.max_per_customer))
    count, rows = view.offending(query)
    return count, [Breach(LIMIT, f"{row.slug} / {mask_email(row.customer_email)}",
                          f"{row.taken} units, limit {row.max_per_customer}") for row in rows]
