"""Recording expiries: the clock already decided (stock.py); these only write down what it decided.

expire_hold runs at a hold's expiry; sweep_expired_holds repairs whatever a dead worker or a lost
scheduled job missed. Both use conditional updates, so running either twice has no further effect.
"""

from sqlalchemy import insert, select, update

from ..models import EXPIRED, Order
from . import soldout
from .clock import db_now, is_postgresql
from .ledger import EVENTS, event_row, lock_products, transition_hold
from .stock import lapsed_hold


def expire_hold(session, redis, hold_id):
    """Record one lapsed PENDING hold as EXPIRED; returns True if this call did it."""
    won = transition_hold(session, hold_id, EXPIRED, still_live=False,
                          metadata={"reason": "hold_lapsed"})
    if won:
        soldout.stock_returned(redis, [won[0]])
    return won is not None


def sweep_expired_holds(session, redis, batch_size=500):
    """Record every lapsed PENDING hold as EXPIRED in batches; returns how many this call recorded."""
    recorded = 0
    while True:
        expired = _expire_batch(session, batch_size)
        recorded += len(expired)
        if expired:
            soldout.stock_returned(redis, {product_id for _, product_id, _ in expired})
        if len(expired) < batch_size:
            return recorded


def _expire_batch(session, batch_size):
    """Expire up to batch_size lapsed holds in one transaction; returns (id, product_id, quantity)s."""
    now = db_now(session)
    # Their products' rows first (ledger.py: one lock order), then the holds, skipping any another
    # transaction has locked.
    products = lock_products(session, product_ids=select(Order.product_id).where(lapsed_hold(now)).distinct())
    lapsed = select(Order.id).where(lapsed_hold(now), Order.product_id.in_(products))
    lapsed = lapsed.order_by(Order.hold_expires_at).limit(batch_size)
    if is_postgresql(session):
        # Two sweepers (or a sweeper and expire_hold) skip each other's rows instead of queueing.
        lapsed = lapsed.with_for_update(skip_locked=True)
    ids = session.execute(lapsed).scalars().all()
    if not ids:
        session.rollback()
        return []
    rows = session.execute(
        update(Order)
        .where(Order.id.in_(ids), lapsed_hold(now))
        .values(status=EXPIRED)
        .returning(Order.id, Order.product_id, Order.quantity)
        .execution_options(synchronize_session=False)
    ).all()
    if rows:
        session.execute(insert(EVENTS), [
            event_row(EXPIRED, order_id, product_id, quantity, now, {"reason": "swept"})
            for order_id, product_id, quantity in rows
        ])
    session.commit()
    return rows
