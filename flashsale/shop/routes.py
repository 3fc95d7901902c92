"""Shopper pages: the sales list, a product with its buy form, and a hold with confirm and release.

Every core action is a plain POST form answered by a redirect (works without JavaScript); the scripts in
static/js only poll the small JSON endpoints here to keep numbers and countdowns fresh. Refusals from
the domain become the same page with a flash message and the contract's status code (design section 6).
"""

from datetime import datetime, timezone

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, url_for
from sqlalchemy import select

from .. import checkout
from ..errors import (
    FlashsaleError,
    HoldConfirmed,
    HoldExpired,
    HoldReleased,
    InvalidInput,
    PaymentInProgress,
)
from ..extensions import db
from ..gateways.stripe_settings import hold_page_csp, is_stripe
from ..inventory import catalog, holds
from ..inventory.clock import db_now
from ..inventory.stock import sale_state, stock_levels
from ..models import CONFIRMING, Product
from ..serialise import iso, payment_json
from ..web import polling
from ..web.ratelimits import per_customer
from . import presenting
from .forms import HoldActionForm, HoldForm, JoinForm

bp = Blueprint("shop", __name__)


@bp.get("/")
def index():
    """Live, upcoming and ended sales with a stock indicator and a countdown to each start."""
    session = db.session
    products = session.execute(select(Product).order_by(Product.sale_starts_at, Product.id)).scalars().all()
    levels = stock_levels(session)
    now = db_now(session)
    groups = {"live": [], "upcoming": [], "ended": []}
    for product in products:
        state = sale_state(product.sale_starts_at, product.sale_ends_at, levels[product.id].available, now)
        groups["live" if state == "sold_out" else state].append((product, levels[product.id], state))
    return render_template("shop/index.html", groups=groups, now=now)


@bp.get("/products/<ref>")
def product(ref):
    """A product: description, price, live stock and the buy form (disabled unless the sale is live)."""
    found = catalog.find_product(db.session, ref)
    return render_product(found, HoldForm(max_quantity=max_quantity(found)).fresh_key())


@bp.get("/products/<ref>/stock")
def product_stock(ref):
    """JSON for the product page's poll: available units, sale state, the server's clock and when to poll
    next, from the stock snapshot (polling.py)."""
    return polling.stock_answer(*polling.watch(ref))


@bp.post("/products/<ref>/hold")
@per_customer
def buy(ref):
    """Place a hold from the buy form; one hold per rendering of the form however often it is sent."""
    found = catalog.find_product(db.session, ref)
    form = HoldForm(max_quantity=max_quantity(found))
    if not form.validate_on_submit():
        return render_product(found, form, 422)
    try:
        placed = checkout.place_hold(found.slug, form.email.data, form.quantity.data,
                                     form.idempotency_key.data or None, form.admission.data or None)
    except InvalidInput as invalid:
        for name, problem in invalid.fields.items():
            target = getattr(form, name, None) if name in ("email", "quantity") else None
            (target.errors if target else form.form_errors).append(problem)
        return render_product(found, form.fresh_key(), 422)
    except FlashsaleError as refusal:
        flash(presenting.refusal_message(refusal), "error")
        if refusal.code == "idempotency_mismatch":
            form.fresh_key()
        if refusal.code == "not_admitted":
            return render_product(found, HoldForm(max_quantity=max_quantity(found)).fresh_key(), refusal.status)
        return with_retry_after(render_product(found, form, refusal.status), refusal)
    if not placed.created:
        flash("You already placed this hold; here it is.", "info")
    return redirect(url_for("shop.hold", token=placed.hold.id), 303)


@bp.post("/products/<ref>/queue")
@per_customer
def join(ref):
    """Join a waiting-room product's line from its page, then go to the waiting page."""
    found = catalog.find_product(db.session, ref)
    form = JoinForm()
    if not form.validate_on_submit():
        return render_product(found, HoldForm(max_quantity=max_quantity(found)).fresh_key(), 422,
                              join_form=form)
    try:
        ticket = checkout.join_line(found.slug, form.email.data)
    except FlashsaleError as refusal:
        flash(presenting.refusal_message(refusal), "error")
        return with_retry_after(render_product(found, HoldForm(max_quantity=max_quantity(found)).fresh_key(),
                                               refusal.status), refusal)
    if not ticket.created:
        flash("You are already in this line; here is your place.", "info")
    return redirect(url_for("shop.waiting", ticket_id=ticket.id), 303)


@bp.get("/queue/<ticket_id>")
def waiting(ticket_id):
    """The waiting page: position, wait and progress; the buy form once it is the shopper's turn."""
    ticket = checkout.view_ticket(ticket_id)
    found = db.session.get(Product, ticket.product_id)
    form = None
    if ticket.state == "admitted":
        form = HoldForm(max_quantity=max_quantity(found)).fresh_key()
        form.email.data, form.admission.data = ticket.email, ticket.admission
    page = render_template("shop/waiting.html", ticket=ticket, product=found, form=form,
                           now=datetime.now(timezone.utc), max_quantity=max_quantity(found))
    return page


@bp.get("/holds/<token>")
def hold(token):
    """The hold page: countdown to expiry, confirm and release, or the hold's final outcome."""
    return render_hold(holds.get_hold(db.session, token))


@bp.get("/holds/<token>/status")
def hold_status(token):
    """JSON for the hold page's poll: status as of the database clock, and whether payment is running."""
    session = db.session
    order, payment = checkout.hold_with_payment(token, holds.get_hold(session, token))
    now = db_now(session)
    status = holds.effective_status(order, now)
    return jsonify(status=status, confirming=status == CONFIRMING,
                   hold_expires_at=iso(order.hold_expires_at), server_time=iso(now),
                   payment=payment_json(payment, now) if payment is not None else None)


@bp.post("/holds/<token>/confirm")
def confirm(token):
    """Accept the confirmation (the units are kept for this shopper from now on), then show the hold
    page while the payment runs."""
    require_action_form()
    try:
        accepted = checkout.confirm_hold(token)
    except (HoldExpired, HoldReleased) as refusal:
        return refused_on_hold_page(token, refusal)
    if accepted.accepted_now and is_stripe(current_app.config):
        flash("Confirmed: your units are kept for you. Pay by card below to complete the purchase.", "info")
    elif accepted.accepted_now:
        flash("Confirmed: your units are kept for you while we take the payment. "
              "This page updates by itself.", "info")
    elif accepted.hold.status == CONFIRMING:
        flash("Your confirmation was already accepted; the payment is in progress.", "info")
    else:
        flash("This hold is already confirmed.", "info")
    return redirect(url_for("shop.hold", token=token), 303)


@bp.post("/holds/<token>/release")
def release(token):
    """Give the units back at once."""
    require_action_form()
    try:
        _, released_now = checkout.release_hold(token)
    except (HoldConfirmed, HoldExpired, PaymentInProgress) as refusal:
        return refused_on_hold_page(token, refusal)
    if not released_now:
        flash("This hold was already released.", "info")  # a second click: nothing to do or count
        return redirect(url_for("shop.hold", token=token), 303)
    flash("Hold released: the units are back on sale.", "info")
    return redirect(url_for("shop.hold", token=token), 303)


def require_action_form():
    """Confirm and release carry only the CSRF token, which CSRFProtect has checked already."""
    if not HoldActionForm().validate_on_submit():
        abort(400)


def refused_on_hold_page(token, refusal):
    """The hold page again, with why the action was refused and its status code (409)."""
    session = db.session
    session.rollback()
    flash(presenting.refusal_message(refusal), "error")
    return render_hold(holds.get_hold(session, token), refusal.status)


def max_quantity(product):
    """The most one customer may choose in the form."""
    return max(1, min(product.max_per_customer, current_app.config["MAX_QUANTITY"]))


def render_product(product, form, status=200, join_form=None):
    """The product page with its current stock, state and the given form (a waiting-room product
    shows the form to join its line instead of the buy form)."""
    session = db.session
    level = stock_levels(session, [product.id])[product.id]
    now = db_now(session)
    state = sale_state(product.sale_starts_at, product.sale_ends_at, level.available, now)
    page = render_template("shop/product.html", product=product, level=level, state=state, form=form,
                           now=now, max_quantity=form.max_quantity,
                           join_form=join_form or (JoinForm() if product.waiting_room else None))
    return page, status


def render_hold(order, status=200):
    """The hold page for an order, with its effective status by the database clock. With Stripe it
    carries the card form, and only this page's CSP lets Stripe.js and its frames in."""
    session = db.session
    now = db_now(session)
    effective = holds.effective_status(order, now)
    product = session.get(Product, order.product_id)
    config = current_app.config
    card = None
    if is_stripe(config):
        _, payment = checkout.hold_with_payment(order.id, order)
        card = {"publishable_key": config["STRIPE_PUBLISHABLE_KEY"], "js_url": config["STRIPE_JS_URL"],
                "payment": payment_json(payment, now) if payment is not None else None,
                "deadline": payment.action_deadline if payment is not None else None}
    page = render_template(
        "shop/hold.html", order=order, product=product, status=effective, now=now,
        confirming=effective == CONFIRMING, card=card,
        release_reason=presenting.release_reason(session, order) if effective == "RELEASED" else None,
        form=HoldActionForm())
    response = current_app.make_response((page, status))
    if card is not None:
        response.headers["Content-Security-Policy"] = hold_page_csp(config)
    return response


def with_retry_after(page, refusal):
    """Add Retry-After to a 429 or 503 page, as the API does."""
    body, status = page
    response = current_app.make_response((body, status))
    if status in (429, 503):
        response.headers["Retry-After"] = str(
            getattr(refusal, "retry_after", None) or current_app.config["RETRY_AFTER_SECONDS"])
    return response
