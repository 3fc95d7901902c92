"""The OpenAPI document (design section 14) is valid and says exactly what the code does: every route,
every field the API sends, every error code under its status, and the rule an email must follow.

The schemathesis run against the production web tier is tests/test_schemathesis.py.
"""

import re
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import OpenAPIV31SpecValidator
from sqlalchemy import update

from flashsale import errors
from flashsale.errors import InvalidInput
from flashsale.inventory import catalog
from flashsale.inventory.validation import normalise_email
from flashsale.models import Product
from flashsale.web.handlers import HTTP_CODES

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def document(client):
    answer = client.get("/api/openapi.json")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    return answer.get_json()


def schema_of(document, path, method, status):
    """A validator for the JSON body the document promises for this answer."""
    answer = document["paths"][path][method]["responses"][str(status)]
    schema = {**answer["content"]["application/json"]["schema"], "components": document["components"]}
    return Draft202012Validator(schema, format_checker=FormatChecker())


def conforms(document, path, method, answer, status):
    """Assert the answer has the status, the headers the document requires and a body exactly as
    documented (every field, nothing more)."""
    assert answer.status_code == status, answer.get_data(as_text=True)
    headers = document["paths"][path][method]["responses"][str(status)].get("headers", {})
    for name, header in headers.items():
        component = document["components"]["headers"][header["$ref"].rsplit("/", 1)[1]]
        if component["required"]:
            assert name in answer.headers, (name, path, status)
            assert re.search(component["schema"].get("pattern", ""), answer.headers[name]), (name, path)
    problems = [e.message for e in schema_of(document, path, method, status).iter_errors(answer.get_json())]
    assert not problems, (path, method, status, problems, answer.get_json())
    return answer.get_json()


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(document).validate()


def test_every_route_of_the_api_is_in_the_document_and_nothing_else(app, document):
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") or rule.rule in ("/healthz", "/livez"):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            served |= {(path, method.lower()) for method in rule.methods if method.lower() in METHODS}
    documented = {(path, method) for path, item in document["paths"].items() for method in item
                  if method in METHODS}
    assert served == documented
    assert ("/api/products/{ref}/holds", "post") in documented


def documented_codes(document):
    """{(status, code)} of every error answer in the document."""
    found = set()
    for item in document["paths"].values():
        for op in item.values():
            for status, answer in op["responses"].items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                if schema.get("$ref") == "#/components/schemas/Error":
                    for code in schema["properties"]["error"]["properties"]["code"]["enum"]:
                        found.add((int(status), code))
    return found


def test_every_error_code_is_documented_under_its_status_and_no_other(document):
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    in_code = {(error.status, error.code) for error in subclasses(errors.FlashsaleError)}
    # The handler's codes for HTTP failures that are no FlashsaleError: the same codes by status, and
    # 413 for a body over MAX_CONTENT_LENGTH (a 405 names its methods in Allow; a 500 is a bug).
    in_code |= {(status, code) for status, code in HTTP_CODES.items()} | {(413, "invalid")}
    assert documented_codes(document) == in_code
    section_6 = {"invalid", "not_found", "sale_not_open", "sold_out", "limit_exceeded", "hold_expired",
                 "idempotency_mismatch", "not_admitted", "rate_limited", "unavailable"}
    assert section_6 <= {code for _, code in documented_codes(document)}


def test_every_answer_of_the_api_has_exactly_the_documented_fields(app, client, document, make_product, session):
    """Drive each operation to each of its main answers; every body matches its schema, whose
    properties are all required and the only ones allowed, so a field missing from either side fails."""
    make_product(slug="ps5", total_stock=3, max_per_customer=1)
    docs = lambda path, method, answer, status: conforms(document, path, method, answer, status)  # noqa: E731
    docs("/api/products", "get", client.get("/api/products"), 200)
    product = docs("/api/products/{ref}", "get", client.get("/api/products/ps5"), 200)
    assert set(product) == set(document["components"]["schemas"]["Product"]["properties"])
    hold = docs("/api/products/{ref}/holds", "post",
                client.post("/api/products/ps5/holds", json={"email": "a@example.com"},
                            headers={"Idempotency-Key": "k-1"}), 201)
    docs("/api/products/{ref}/holds", "post",
         client.post("/api/products/ps5/holds", json={"email": "a@example.com"},
                     headers={"Idempotency-Key": "k-1"}), 200)
    docs("/api/holds/{hold_id}", "get", client.get(f"/api/holds/{hold['id']}"), 200)
    confirmed = docs("/api/holds/{hold_id}/confirm", "post", client.post(f"/api/holds/{hold['id']}/confirm"), 202)
    assert set(confirmed["payment"]) == set(document["components"]["schemas"]["Payment"]["properties"])
    docs("/api/holds/{hold_id}/confirm", "post", client.post(f"/api/holds/{hold['id']}/confirm"), 200)
    docs("/api/holds/{hold_id}/release", "post", client.post(f"/api/holds/{hold['id']}/release"), 409)
    other = client.post("/api/products/ps5/holds", json={"email": "b@example.com"}).get_json()
    docs("/api/holds/{hold_id}/release", "post", client.post(f"/api/holds/{other['id']}/release"), 200)
    docs("/api/holds/{hold_id}/confirm", "post", client.post(f"/api/holds/{other['id']}/confirm"), 409)
    invalid = docs("/api/products/{ref}/holds", "post",
                   client.post("/api/products/ps5/holds", json={"email": "nope", "quantity": 0}), 422)
    assert set(invalid["error"]["fields"]) == {"email", "quantity"}
    docs("/api/products/{ref}/holds", "post",
         client.post("/api/products/ps5/holds", json={"email": "b@example.com", "quantity": 2}), 409)
    docs("/api/products/{ref}", "get", client.get("/api/products/nothing-here"), 404)
    docs("/api/holds/{hold_id}", "get", client.get("/api/holds/" + "x" * 20), 404)
    docs("/api/products/{ref}/queue", "post", client.post("/api/products/ps5/queue", json={"email": "c@x.io"}), 409)
    docs("/healthz", "get", client.get("/healthz"), 200)
    docs("/livez", "get", client.get("/livez"), 200)

    # A waiting-room product: a ticket, the ticket again, and a hold without an admission.
    pid = make_product(slug="line", total_stock=5, starts_in=timedelta(minutes=-1))
    session.execute(update(Product).where(Product.id == pid).values(waiting_room=True))
    session.commit()
    catalog.forget()
    ticket = docs("/api/products/{ref}/queue", "post",
                  client.post("/api/products/line/queue", json={"email": "d@example.com"}), 201)
    docs("/api/products/{ref}/queue", "post",
         client.post("/api/products/line/queue", json={"email": "d@example.com"}), 200)
    docs("/api/queue/{ticket_id}", "get", client.get(f"/api/queue/{ticket['id']}"), 200)
    docs("/api/products/{ref}/holds", "post",
         client.post("/api/products/line/holds", json={"email": "d@example.com"}), 403)


def test_a_poll_answers_304_with_its_headers_while_its_etag_is_current(client, document, make_product):
    make_product(slug="ps5")
    first = client.get("/api/products/ps5")
    again = client.get("/api/products/ps5", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and not again.data
    promised = document["paths"]["/api/products/{ref}"]["get"]["responses"]["304"]["headers"]
    assert set(promised) <= set(again.headers.keys())


def email_validator(document):
    schema = {**document["components"]["schemas"]["Email"], "components": document["components"]}
    return Draft202012Validator(schema)


def accepted(email):
    try:
        normalise_email(email)
        return True
    except InvalidInput:
        return False


NEAR_EMAILS = st.text(alphabet="aZ9.-@_+ \t", max_size=16)


@settings(max_examples=600, deadline=None)
@given(email=NEAR_EMAILS | st.from_regex(r"\A\s?[a.]{0,3}@[a9.-]{0,6}\s?\Z"))
def test_the_documented_email_rule_is_the_one_the_api_applies(email):
    """What the API accepts as an email is exactly what the document's Email schema allows."""
    validator = email_validator(_DOCUMENT)
    assert validator.is_valid(email) == accepted(email), email


@pytest.mark.parametrize("email", [
    "a@b.co", " a@b.co\n", ".@b.co", "a.@b.co", "a..b@b.co", "a@b..co", "a@b", "a@-b.co", "a@b.co-",
    "a@b-.co", "a@b.-.co", "a" * 64 + "@b.co", "a" * 65 + "@b.co", "a@" + "b" * 248 + ".co",
    "a@" + "b" * 249 + ".co", "A@B.CO", "a@b.c_o", "a b@c.de", "@b.co", "a@@b.co",
])
def test_the_email_rule_agrees_at_its_edges(email):
    assert email_validator(_DOCUMENT).is_valid(email) == accepted(email)


def _build_document():
    from config import TestConfig
    from flashsale.api.openapi import document

    return document({"MAX_QUANTITY": TestConfig.MAX_QUANTITY})


_DOCUMENT = _build_document()


def test_with_rate_limits_on_the_limited_operations_send_the_documented_limit_headers(document, make_product,
                                                                                      session):
    from config import TestConfig
    from flashsale import create_app

    make_product(slug="ps5", total_stock=1)
    pid = make_product(slug="line")
    session.execute(update(Product).where(Product.id == pid).values(waiting_room=True))
    session.commit()
    catalog.forget()
    limited = create_app(TestConfig, RATELIMIT_ENABLED=True).test_client()
    answers = [("/api/products/{ref}/holds", limited.post("/api/products/ps5/holds", json={"email": "a@x.io"}), 201),
               ("/api/products/{ref}/holds", limited.post("/api/products/ps5/holds", json={"email": "b@x.io"}), 409),
               ("/api/products/{ref}/queue", limited.post("/api/products/line/queue", json={"email": "a@x.io"}), 201)]
    for path, answer, status in answers:
        assert answer.status_code == status
        promised = document["paths"][path]["post"]["responses"][str(status)]["headers"]
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Request-Id"):
            schema = document["components"]["headers"][promised[name]["$ref"].rsplit("/", 1)[1]]["schema"]
            assert re.search(schema["pattern"], answer.headers[name]), (path, status, name)


def test_the_page_for_people_shows_every_operation_error_code_and_schema_from_this_origin_only(client, document):
    """GET /api/docs renders the same document: every operation with its parameters and answers, every
    error code, every named schema; no script, stylesheet or link to another origin, and the shop's CSP."""
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert f"<code>{method.upper()} {path}</code>" in html
            assert f'id="{op["operationId"]}"' in html
            for name in (p["$ref"].rsplit("/", 1)[-1] for p in op.get("parameters", [])):
                assert f"<code>{document['components']['parameters'][name]['name']}</code>" in html
    for status, code in documented_codes(document):
        assert f"<code>{code}</code>" in html, (status, code)
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name}"' in html
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)  # nothing from another origin
    assert page.headers["Content-Security-Policy"] == client.get("/").headers["Content-Security-Policy"]
