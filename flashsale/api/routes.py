"""JSON endpoints: products, holds, confirm and release. Thin: parse, call the domain, shape the answer."""

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from .. import checkout, polling, soldout_gate
from ..errors import InvalidInput
from ..extensions import db
from ..inventory import holds
from ..ratelimits import hold_limits
from .serialise import hold_json, ticket_json

bp = Blueprint("api", __name__, url_prefix="/api")
HOLD_FIELDS = {"email", "quantity"}


@bp.get("/products")
def list_products():
    """Every product with its stock and state, from the stock snapshots (polling.py)."""
    return polling.products_answer(polling.watch_all())


@bp.get("/products/<ref>")
def get_product(ref):
    """One product by id or slug, from its stock snapshot: what programs poll (polling.py)."""
    return polling.product_answer(*polling.watch(ref))


@bp.post("/products/<ref>/holds")
@hold_limits
def create_hold(ref):
    """Place a two-minute hold: 201 new, 200 idempotent replay, 409/422/503 with a reason code."""
    body = json_body()
    unknown = set(body) - HOLD_FIELDS
    if unknown:
        raise InvalidInput({name: "Unknown field." for name in sorted(unknown)})
    placed = checkout.place_hold(ref, body.get("email"), body.get("quantity", 1),
                                 request.headers.get("Idempotency-Key"), request.headers.get("Admission"),
                                 sold_out_checked=soldout_gate.counted(request.environ))
    return jsonify(hold_json(placed.hold)), 201 if placed.created else 200


@bp.post("/products/<ref>/queue")
@hold_limits
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
    """One hold by its token."""
    return jsonify(hold_json(holds.get_hold(db.session, hold_id)))


@bp.post("/holds/<hold_id>/confirm")
def confirm_hold(hold_id):
    """Accept the confirmation: 202 CONFIRMING (the promise is made), 200 already CONFIRMING or
    CONFIRMED, 409 hold_expired / hold_released."""
    accepted = checkout.confirm_hold(hold_id)
    return jsonify(hold_json(accepted.hold)), 202 if accepted.accepted_now else 200


@bp.post("/holds/<hold_id>/release")
def release_hold(hold_id):
    """Give the hold's units back at once."""
    order, _ = checkout.release_hold(hold_id)
    return jsonify(hold_json(order)), 200


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
