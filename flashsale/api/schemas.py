"""The OpenAPI document's components: the JSON shapes of serialise.py, the headers and the error body.

Each schema lists every field the API sends (all required, nothing else allowed), so a field added to
serialise.py and not here fails tests/test_openapi.py, and the schemathesis run (tests/test_schemathesis.py)
checks every answer of the running app against them.
"""

from ..inventory.validation import HOLD_ID_RE, IDEMPOTENCY_KEY_RE, MAX_EMAIL_LENGTH
from ..inventory.waiting_room import TICKET_RE
from ..models import ORDER_STATUSES

# An email the API accepts (validation.normalise_email), as one JSON Schema: surrounding whitespace is
# trimmed; then at most 254 characters, a local part of 1-64 characters, one @, a domain that starts and
# ends with a letter or digit and has a dot; no "..". tests/test_openapi.py checks that the two agree.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOMAIN = r"[A-Za-z0-9]"
EMAIL_SCHEMA = {
    "type": "string",
    "description": "An email address (surrounding whitespace is trimmed; stored lower-case).",
    "pattern": (rf"^\s*\.?(?:{_LOCAL}+\.)*{_LOCAL}*@{_DOMAIN}[A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*"
                rf"\.[A-Za-z0-9-]*{_DOMAIN}\s*$"),
    "allOf": [{"pattern": r"^\s*[^@\s]{1,64}@"},
              {"pattern": rf"^\s*\S{{1,{MAX_EMAIL_LENGTH}}}\s*$"}],
    "examples": ["shopper@example.com"],
}
ISO_TIME = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC (Z)."}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
PAYMENT_STATUSES = ["processing", "requires_payment_method", "requires_action", "captured", "refused",
                    "canceled", "refunded"]
TICKET_STATES = ["waiting", "admitted", "sold_out", "closed"]
PRODUCT_STATES = ["upcoming", "live", "sold_out", "ended"]


def closed(properties, description, optional=()):
    """An object schema whose properties are all required (but `optional`) and the only ones allowed."""
    return {"type": "object", "description": description, "additionalProperties": False,
            "required": [name for name in properties if name not in optional], "properties": properties}


def ref(name, kind="schemas"):
    """A $ref to a component."""
    return {"$ref": f"#/components/{kind}/{name}"}


PRODUCT = closed({
    "id": {"type": "integer", "minimum": 1},
    "slug": {"type": "string"},
    "name": {"type": "string"},
    "description": {"type": "string"},
    "price_cents": {"type": "integer", "minimum": 0},
    "currency": {"type": "string", "pattern": "^[a-z]{3}$", "description": "ISO 4217, lower-case."},
    "total_stock": {"type": "integer", "minimum": 0},
    "max_per_customer": {"type": "integer", "minimum": 1},
    "sale_starts_at": ISO_TIME,
    "sale_ends_at": ISO_TIME,
    "waiting_room": {"type": "boolean", "description": "Holds need an admission from the line (section 10)."},
    "available": {"type": "integer", "minimum": 0},
    "state": {"enum": PRODUCT_STATES},
    "poll_seconds": {"type": "number", "minimum": 0, "description": "When to poll again."},
}, "A product on sale, with its stock as of now (design section 7).")

PAYMENT = closed({
    "status": {"enum": PAYMENT_STATUSES},
    "reference": {"type": ["string", "null"], "description": "The PaymentIntent's id, or the fake's charge."},
    "client_secret": {"type": ["string", "null"], "description": "For Stripe.js, while the shopper can act."},
    "action_deadline": NULLABLE_TIME,
    "error": {"type": ["string", "null"], "description": "The last card's refusal, while another may be tried."},
}, "Where a hold's payment stands, once a confirmation was accepted (design section 11).")

HOLD = closed({
    "id": {"type": "string", "pattern": HOLD_ID_RE.pattern, "description": "The hold's token."},
    "product_id": {"type": "integer", "minimum": 1},
    "email": {"type": "string"},
    "quantity": {"type": "integer", "minimum": 1},
    "status": {"enum": list(ORDER_STATUSES)},
    "hold_expires_at": ISO_TIME,
    "created_at": ISO_TIME,
    "confirmation_requested_at": NULLABLE_TIME,
    "confirmed_at": NULLABLE_TIME,
    "payment": ref("Payment"),
}, "A hold: the order as its owner sees it (design section 7).", optional=("payment",))

TICKET = closed({
    "id": {"type": "string", "pattern": TICKET_RE.pattern},
    "product_id": {"type": "integer", "minimum": 1},
    "email": {"type": "string"},
    "state": {"enum": TICKET_STATES},
    "position": {"type": ["integer", "null"], "minimum": 1, "description": "From 1, while waiting."},
    "estimated_wait_seconds": {"type": ["integer", "null"], "minimum": 0},
    "admission": {"type": ["string", "null"], "description": "Send as the Admission header of the hold."},
    "admission_expires_at": NULLABLE_TIME,
    "line_length": {"type": "integer", "minimum": 0},
    "admitted": {"type": "integer", "minimum": 0},
    "admission_rate": {"type": "integer", "minimum": 0, "description": "Shoppers admitted per second."},
    "poll_seconds": {"type": "number", "minimum": 0},
    "joined_at": NULLABLE_TIME,
    "admitted_at": NULLABLE_TIME,
}, "A place in a waiting-room product's line (design section 10).")

HEALTH = closed({
    "database": {"enum": ["ok", "down"]},
    "redis": {"enum": ["ok", "down"]},
}, "Whether the database and Redis answer.")

ERROR = closed({
    "error": closed({
        "code": {"type": "string"},
        "message": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "What is wrong with each field (422 invalid)."},
    }, "What went wrong.", optional=("fields",)),
}, "Every refusal (design section 6); each answer lists the codes it can carry.")

HOLD_REQUEST = {
    "type": "object", "additionalProperties": False, "required": ["email"],
    "properties": {"email": ref("Email"),
                   "quantity": {"type": "integer", "minimum": 1, "default": 1,
                                "description": "A JSON integer literal: 2.0 is refused (nothing is coerced)."}},
}
QUEUE_REQUEST = {"type": "object", "additionalProperties": False, "required": ["email"],
                 "properties": {"email": ref("Email")}}
CONFIRM_REQUEST = {
    "type": "object", "additionalProperties": False,
    "properties": {"payment_method": {"type": ["string", "null"],
                                      "pattern": r"^(pm|card|src)_[A-Za-z0-9_]{1,200}$",
                                      "description": "With Stripe: the card to authorise (pm_...)."}},
}


def _header(schema, description, required=True):
    return {"schema": schema, "description": description, "required": required}


HEADERS = {
    "RequestId": _header({"type": "string", "pattern": r"^[A-Za-z0-9._:-]{8,128}$"},
                         "This request's id, also in every log line about it: the X-Request-Id a proxy sent "
                         "(8-128 of A-Z a-z 0-9 . _ : -), else a new one."),
    "RetryAfter": _header({"type": "string", "pattern": r"^\d+$"}, "Seconds to wait before trying again."),
    "ETag": _header({"type": "string"}, "Changes exactly when the answer changes (send as If-None-Match)."),
    "CacheControl": _header({"type": "string"}, "How long a cache may keep the answer."),
    "PollSeconds": _header({"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                           "Seconds until the next poll (also `poll_seconds` in the body)."),
    "RateLimitLimit": _header({"type": "string", "pattern": r"^\d+$"},
                              "Requests allowed in the window reported (when rate limits are on).", False),
    "RateLimitRemaining": _header({"type": "string", "pattern": r"^\d+$"}, "Requests left in that window.", False),
    "RateLimitReset": _header({"type": "string", "pattern": r"^\d+$"}, "When that window ends (epoch seconds).", False),
}

PARAMETERS = {
    "ProductRef": {"name": "ref", "in": "path", "required": True, "description": "A product's id or slug.",
                   "schema": {"type": "string"}, "examples": {"slug": {"value": "ps5"}, "id": {"value": "1"}}},
    "HoldId": {"name": "hold_id", "in": "path", "required": True,
               "description": "The hold's token (the capability to confirm or release it).",
               "schema": {"type": "string", "pattern": HOLD_ID_RE.pattern}},
    "TicketId": {"name": "ticket_id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": TICKET_RE.pattern}},
    "IdempotencyKey": {"name": "Idempotency-Key", "in": "header", "required": False,
                       "description": "Retry safely: one key makes at most one hold; a replay gets that hold "
                                      "(200); the key with another body is refused (422 idempotency_mismatch).",
                       "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_RE.pattern}},
    "Admission": {"name": "Admission", "in": "header", "required": False,
                  "description": "A waiting-room product's admission (from the ticket), bound to this "
                                 "product and email.", "schema": {"type": "string"}},
    "IfNoneMatch": {"name": "If-None-Match", "in": "header", "required": False,
                    "description": "The ETag last seen: 304 with no body while it is current.",
                    "schema": {"type": "string"}},
}


def components():
    """The document's `components`."""
    return {
        "schemas": {"Product": PRODUCT, "Hold": HOLD, "Payment": PAYMENT, "Ticket": TICKET,
                    "Health": HEALTH, "Error": ERROR, "Email": EMAIL_SCHEMA,
                    "HoldRequest": HOLD_REQUEST, "QueueRequest": QUEUE_REQUEST,
                    "ConfirmRequest": CONFIRM_REQUEST},
        "headers": HEADERS,
        "parameters": PARAMETERS,
    }
