"""The OpenAPI 3.1 document of the JSON API (design section 14), built here and served at /api/openapi.json.

This module is the document's one source: paths and answers here, shapes in schemas.py, error codes and
their statuses taken from the exceptions in errors.py (plus the few the error handler gives to HTTP
failures). tests/test_openapi.py fails when a route, a field or an error code is in the code and not in
the document, or the other way round; tests/test_schemathesis.py fuzzes the running app against it.
"""

import copy
from functools import lru_cache

from .. import errors
from . import schemas
from .schemas import ref

JSON = "application/json"
# Codes the error handler (web/handlers.py) gives to failures that are no FlashsaleError: a body over
# MAX_CONTENT_LENGTH is 413 `invalid`.
TOO_LARGE = ("invalid", 413, "The request body is too large.")


def refusal(error):
    """(code, status, message) of an exception class of errors.py."""
    return error.code, error.status, error.message


READ = [refusal(errors.Unavailable)]
HOLD_PATH_ERRORS = [refusal(errors.NotFound), *READ]
BODY_ERRORS = [refusal(errors.InvalidInput), TOO_LARGE]


def error_answers(refusals):
    """{status: response} for (code, status, message) refusals: one response per status, its schema the
    error body with exactly those codes."""
    by_status = {}
    for code, status, message in refusals:
        by_status.setdefault(status, {})[code] = message
    answers = {}
    for status, codes in sorted(by_status.items()):
        listed = "; ".join(f"`{code}`: {message}" for code, message in codes.items())
        answer = {"description": listed, "content": {JSON: {"schema": {
            "$ref": "#/components/schemas/Error",
            "properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}}}}}
        if status in (429, 503):
            answer["headers"] = {"Retry-After": ref("RetryAfter", "headers")}
        answers[str(status)] = answer
    return answers


def body_answer(description, schema, headers=None):
    """A JSON answer with this schema."""
    answer = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


POLL_HEADERS = {name: ref(component, "headers") for name, component in
                (("ETag", "ETag"), ("Cache-Control", "CacheControl"), ("Poll-Seconds", "PollSeconds"))}
RATE_LIMIT_HEADERS = {name: ref(component, "headers") for name, component in
                      (("X-RateLimit-Limit", "RateLimitLimit"), ("X-RateLimit-Remaining", "RateLimitRemaining"),
                       ("X-RateLimit-Reset", "RateLimitReset"))}
NOT_MODIFIED = {"description": "Not modified: the If-None-Match named the current ETag.", "headers": POLL_HEADERS}


def operation(operation_id, summary, answers, refusals=(), parameters=(), body=None, links=None, headers=None):
    """One operation: its answers, then its refusals by status (`headers`: on every one of them)."""
    op = {"operationId": operation_id, "summary": summary,
          "responses": {**answers, **error_answers(refusals)}}
    for answer in op["responses"].values():
        answer["headers"] = {**(headers or {}), **answer.get("headers", {})}
    if parameters:
        op["parameters"] = [ref(name, "parameters") for name in parameters]
    if body is not None:
        op["requestBody"] = body
    if links:
        for status in links.get("statuses", ()):
            op["responses"][status]["links"] = links["links"]
    return op


def json_body(schema_name, required=True, description=None):
    """A request body of one JSON schema."""
    body = {"required": required, "content": {JSON: {"schema": ref(schema_name)}}}
    if description:
        body["description"] = description
    return body


HOLD_LINKS = {name: {"operationId": target, "parameters": {"hold_id": "$response.body#/id"}}
              for name, target in (("GetHold", "getHold"), ("ConfirmHold", "confirmHold"),
                                   ("ReleaseHold", "releaseHold"))}
TICKET_LINKS = {"GetTicket": {"operationId": "getTicket", "parameters": {"ticket_id": "$response.body#/id"}}}


def paths():
    """Every path of the JSON API, /healthz and /livez."""
    hold = ref("Hold")
    return {
        "/api/products": {"get": operation(
            "listProducts", "Every product with its stock and state (poll it; honours If-None-Match).",
            {"200": body_answer("The products.", {
                "type": "object", "additionalProperties": False, "required": ["products"],
                "properties": {"products": {"type": "array", "items": ref("Product")}}}, POLL_HEADERS),
             "304": NOT_MODIFIED},
            READ, ["IfNoneMatch"])},
        "/api/products/{ref}": {"get": operation(
            "getProduct", "One product by id or slug, with its stock as of now.",
            {"200": body_answer("The product.", ref("Product"), POLL_HEADERS), "304": NOT_MODIFIED},
            [refusal(errors.NotFound), *READ], ["ProductRef", "IfNoneMatch"])},
        "/api/products/{ref}/holds": {"post": operation(
            "createHold", "Place a hold (two minutes by default) on a live sale's units.",
            {"201": body_answer("The hold was placed.", hold),
             "200": body_answer("A replay of the Idempotency-Key: the hold it made.", hold)},
            [*BODY_ERRORS, refusal(errors.IdempotencyMismatch), refusal(errors.NotFound),
             refusal(errors.NotAdmitted), refusal(errors.SaleNotOpen), refusal(errors.SoldOut),
             refusal(errors.LimitExceeded), refusal(errors.RateLimited), *READ],
            ["ProductRef", "IdempotencyKey", "Admission"], json_body("HoldRequest"),
            {"statuses": ("201", "200"), "links": HOLD_LINKS}, RATE_LIMIT_HEADERS)},
        "/api/products/{ref}/queue": {"post": operation(
            "joinQueue", "Join a waiting-room product's line (once per email).",
            {"201": body_answer("A new ticket.", ref("Ticket")),
             "200": body_answer("This email's ticket, joined before.", ref("Ticket"))},
            [*BODY_ERRORS, refusal(errors.NotFound), refusal(errors.NoWaitingRoom),
             refusal(errors.RateLimited), *READ],
            ["ProductRef"], json_body("QueueRequest"), {"statuses": ("201", "200"), "links": TICKET_LINKS},
            RATE_LIMIT_HEADERS)},
        "/api/queue/{ticket_id}": {"get": operation(
            "getTicket", "A ticket as of now: position and wait, or the admission once admitted.",
            {"200": body_answer("The ticket.", ref("Ticket"))}, HOLD_PATH_ERRORS, ["TicketId"])},
        "/api/holds/{hold_id}": {"get": operation(
            "getHold", "A hold by its token, with its payment once a confirmation was accepted.",
            {"200": body_answer("The hold.", hold)}, HOLD_PATH_ERRORS, ["HoldId"])},
        "/api/holds/{hold_id}/confirm": {"post": operation(
            "confirmHold", "Confirm (pay for) a live hold: the promise is made when this answers 202.",
            {"202": body_answer("Accepted: CONFIRMING; it ends CONFIRMED unless the payment is refused.", hold),
             "200": body_answer("Already CONFIRMING or CONFIRMED (with Stripe: the payment read again, and a "
                                "new payment_method tried).", hold)},
            [*BODY_ERRORS, refusal(errors.NotFound), refusal(errors.HoldExpired), refusal(errors.HoldReleased),
             *READ],
            ["HoldId"], json_body("ConfirmRequest", required=False,
                                  description="Optional; with Stripe, the card to authorise."))},
        "/api/holds/{hold_id}/release": {"post": operation(
            "releaseHold", "Give a PENDING hold's units back at once (again: the same RELEASED hold).",
            {"200": body_answer("RELEASED.", hold)},
            [refusal(errors.NotFound), refusal(errors.HoldExpired), refusal(errors.HoldConfirmed),
             refusal(errors.PaymentInProgress), *READ], ["HoldId"])},
        "/api/openapi.json": {"get": {
            "operationId": "getOpenAPI", "summary": "This document.",
            "responses": {"200": body_answer("The OpenAPI 3.1 document.", {"type": "object"})}}},
        "/api/docs": {"get": {
            "operationId": "getDocs", "summary": "This document as a page for people (HTML, no scripts).",
            "responses": {"200": {"description": "The page.",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/healthz": {"get": {
            "operationId": "health", "summary": "Whether the database and Redis answer.",
            "responses": {"200": body_answer("Both answer.", ref("Health")),
                          "503": body_answer("Something is down (named).", ref("Health"),
                                             {"Retry-After": ref("RetryAfter", "headers")})}}},
        "/livez": {"get": {
            "operationId": "live", "summary": "Whether this web process serves (the load balancer's check): "
                                              "touches neither Redis nor the database.",
            "responses": {"200": body_answer("It serves.", {
                "type": "object", "required": ["status"], "additionalProperties": False,
                "properties": {"status": {"const": "live"}}})}}},
    }


def with_request_ids(paths_):
    """Every answer carries X-Request-Id (web/logs.py), whoever gives it (Flask or a gate)."""
    for item in paths_.values():
        for op in item.values():
            for answer in op["responses"].values():
                answer.setdefault("headers", {})
                answer["headers"] = {**answer["headers"], "X-Request-Id": ref("RequestId", "headers")}
    return paths_


@lru_cache(maxsize=8)
def _document(max_quantity):
    components = copy.deepcopy(schemas.components())
    components["schemas"]["HoldRequest"]["properties"]["quantity"]["maximum"] = max_quantity
    return {
        "openapi": "3.1.0",
        "info": {"title": "flashsale", "version": "1",
                 "description": "The JSON API of a flash-sale engine: products, holds, confirmations, "
                                "waiting rooms. Times are ISO 8601 UTC; every refusal is "
                                '`{"error": {"code", "message", "fields"?}}`.'},
        "paths": with_request_ids(paths()),
        "components": components,
    }


def document(config):
    """The document for an app with this config (MAX_QUANTITY shapes the hold request)."""
    return _document(config["MAX_QUANTITY"])
