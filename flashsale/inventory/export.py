"""The orders the shop fulfils, read in one streamed pass: constant memory however many there are."""

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from ..models import ORDER_STATUSES, Order, Payment, Product
from ..serialise import iso

# Design section 12's header, in its order.
COLUMNS = ("hold_id", "product_slug", "email", "quantity", "amount_cents", "currency", "status", "created_at",
           "confirmed_at", "payment_reference")
BATCH = 2000  # rows fetched per round trip from a server-side cursor


class UnknownFilter(ValueError):
    """An export filter naming a product or a status that does not exist; `param` says which."""

    def __init__(self, param, message):
        super().__init__(message)
        self.param = param


def check_filters(session, product_slug=None, status=None):
    """(product id or None, status or None), or UnknownFilter: checked before anything is written."""
    product_id = None
    if product_slug is not None:
        product_id = session.execute(select(Product.id).where(Product.slug == product_slug)).scalar_one_or_none()
        if product_id is None:
            raise UnknownFilter("--product", f"no product with slug {product_slug!r}")
    if status is not None:
        status = status.upper()
        if status not in ORDER_STATUSES:
            raise UnknownFilter("--status", f"{status!r} is not a status: use one of {', '.join(ORDER_STATUSES)}")
    return product_id, status


def orders(connection, product_id=None, status=None):
    """Yield one dict per matching order (COLUMNS), oldest first, from a server-side cursor on
    PostgreSQL (a streamed cursor on SQLite): memory holds one batch, not the result."""
    payment = aliased(Payment)
    query = (select(Order.id.label("hold_id"), Product.slug.label("product_slug"),
                    Order.customer_email.label("email"), Order.quantity,
                    func.coalesce(payment.amount_cents, Order.quantity * Product.price_cents).label("amount_cents"),
                    func.coalesce(payment.currency, Product.currency).label("currency"), Order.status,
                    Order.created_at, Order.confirmed_at,
                    func.coalesce(payment.intent_id, payment.charge_ref).label("payment_reference"))
             .join(Product, Product.id == Order.product_id)
             .outerjoin(payment, payment.order_id == Order.id)
             .order_by(Order.created_at, Order.id))
    if product_id is not None:
        query = query.where(Order.product_id == product_id)
    if status is not None:
        query = query.where(Order.status == status)
    result = connection.execution_options(stream_results=True, yield_per=BATCH).execute(query)
    for row in result:
        record = row._asdict()
        record["created_at"], record["confirmed_at"] = iso(record["created_at"]), iso(record["confirmed_at"])
        yield record
