"""JSON endpoints: products, holds, confirm and release. Thin: parse, call the domain, shape the answer."""

import re

from flask import Blueprint, current_app, jsonify, render_template, request
from werkzeug.exceptions import RequestEntityTooLarge

from .. import checkout
from ..errors import InvalidInput
from ..extensions import db
from ..gates import holds as hold_gate
from ..gates import sold_out
from ..gateways.stripe_settings import is_stripe
from ..inventory import holds
from ..serialise import hold_json, ticket_json
from ..web import hold_limits, polling
from ..web.ratelimits import per_customer
from . import docs_page as docs_page_model
from . import openapi

bp = Blueprint("api", __name__, url_prefix="/api")
HOLD_FIELDS = {"email", "quantity"}
# A PaymentMethod id (pm_), or a Card or Source (card_, src_) that Stripe takes in its place.
PAYMENT_METHOD_RE = re.compile(r"^(pm|card|src)_[A-Za-z0-9_]{1,200}$")


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI 3.1 document of this API (api/openapi.py)."""
    return jsonify(openapi.document(current_app.config))


@bp.get("/docs")
def docs_page():
    """The same document as a page for people, rendered here (api/docs_page.py)."""
    document = openapi.document(current_app.config)
    return render_template("api/docs.html", document=document, operations=docs_page_model.operations(document),
                           schemas=docs_page_model.schemas(document), describe=docs_page_model.prose)


@bp.get("/products")
def list_products():
    """Every product with its stock and state, from the stock snapshots (polling.py)."""
    return polling.products_answer(polling.watch_all())


@bp.get("/products/<ref>")
def get_product(ref):
    """One product by id or slug, from its stock snapshot: what programs poll (polling.py)."""
    return polling.product_answer(*polling.watch(ref))


@bp.post("/products/<ref>/holds")
@hold_limits.limited
def create_hold(ref):
    """Place a two-minute hold: 201 new, 200 idempotent replay, 409/422/503 with a reason code."""
    if (met := hold_gate.outcome(request.environ)) is not None:
        raise met  # the hold gate placed this request and met a refusal or an error (gates/holds.py)
    body = json_body()
    unknown = set(body) - HOLD_FIELDS
    if unknown:
        raise InvalidInput({name: "Unknown field." for name in sorted(unknown)})
    placed = checkout.place_hold(ref, body.get("email"), body.get("quantity", 1),
                                 request.headers.get("Idempotency-Key"), request.headers.get("Admission"),
                                 sold_out_checked=sold_out.probed(request.environ))
    return jsonify(hold_json(placed.hold)), 201 if placed.created else 200


@bp.post("/products/<ref>/queue")
@per_customer
def join_queue(ref):
    """Join a waiting-room product's line: 201 a new ticket, 200 the email's ticket; 409 no_waiting_room."""
    body = json_body()
    unknown = set(body) - {"email"}
    if unknown:
        raise InvalidInput({name: "Unknown field." for name in sorted(unknown)})
    ticket = checkout.join_line(ref, body.get("email"))
    return jsonify(ticket_json(ticket)), 201 if ticket.created else 200


@bp.get("/queue/<ticket_id>")
def get_ticket(ticket_id):
    """A ticket as of now: position and wait while waiting, the admission once admitted."""
    return jsonify(ticket_json(checkout.view_ticket(ticket_id)))


@bp.get("/holds/<hold_id>")
def get_hold(hold_id):
    """One hold by its token (with its payment once a confirmation was accepted)."""
    return jsonify(hold_json(*checkout.hold_with_payment(hold_id, holds.get_hold(db.session, hold_id))))


@bp.post("/holds/<hold_id>/confirm")
def confirm_hold(hold_id):
    """Accept the confirmation: 202 CONFIRMING (the promise is made), 200 already CONFIRMING or
    CONFIRMED, 409 hold_expired / hold_released. Optional body {"payment_method": "pm_..."}: with
    Stripe, the card to authorise (design section 11)."""
    accepted = checkout.confirm_hold(hold_id, confirm_body())
    # With Stripe the payment flow has moved the hold on since it was accepted: read it again.
    fresh = None if is_stripe(current_app.config) else accepted.hold
    return jsonify(hold_json(*checkout.hold_with_payment(hold_id, fresh))), 202 if accepted.accepted_now else 200


@bp.post("/holds/<hold_id>/release")
def release_hold(hold_id):
    """Give the hold's units back at once."""
    order, _ = checkout.release_hold(hold_id)
    return jsonify(hold_json(order)), 200


def confirm_body():
    """The payment_method of a confirm's optional body (None without one), or InvalidInput."""
    if not request.get_data(cache=True):
        return None
    body = json_body()
    unknown = set(body) - {"payment_method"}
    if unknown:
        raise InvalidInput({name: "Unknown field." for name in sorted(unknown)})
    payment_method = body.get("payment_method")
    if payment_method is not None and not (isinstance(payment_method, str)
                                           and PAYMENT_METHOD_RE.match(payment_method)):
        raise InvalidInput({"payment_method": "A Stripe payment method id, such as pm_1Nx..."})
    return payment_method


def json_body():
    """The request's JSON object, or InvalidInput saying what is wrong with the body."""
    if not request.is_json:
        raise InvalidInput({"body": "Send a JSON object with Content-Type: application/json."})
    try:
        body = request.get_json(force=True, silent=False)
    except RequestEntityTooLarge:
        raise  # 413, not "malformed": the body is over MAX_CONTENT_LENGTH and was never read
    except Exception:  # noqa: BLE001 - werkzeug raises several kinds for bad JSON
        raise InvalidInput({"body": "Malformed JSON."}) from None
    if not isinstance(body, dict):
        raise InvalidInput({"body": "Must be a JSON object."})
    return body
