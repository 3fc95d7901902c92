"""Shopper pages: the sales list (the full shop arrives with the web issue)."""

from flask import Blueprint, render_template
from sqlalchemy import select

from ..extensions import db
from ..inventory.clock import db_now
from ..inventory.stock import sale_state, stock_levels
from ..models import Product

bp = Blueprint("shop", __name__)


@bp.get("/")
def index():
    """Live, upcoming and ended sales with a stock indicator."""
    session = db.session
    products = session.execute(select(Product).order_by(Product.sale_starts_at)).scalars().all()
    levels = stock_levels(session)
    now = db_now(session)
    rows = [(p, levels[p.id], sale_state(p, levels[p.id].available, now)) for p in products]
    return render_template("shop/index.html", rows=rows)
