"""The OpenAPI document as a page for people (GET /api/docs), rendered on the server from the same
document: no scripts, styles or fonts of its own and nothing from another origin, so the CSP is unchanged."""

import json
import re

from markupsafe import Markup, escape

METHODS = ("get", "put", "post", "delete", "patch")


def resolve(document, node):
    """`node`, or the component its $ref names (followed until it names no other)."""
    while isinstance(node, dict) and "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def prose(text):
    """The document's text for HTML: escaped, its `code` spans as <code>."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def schema_label(schema):
    """(component name or None, text): a named schema by its name, an inline one as compact JSON."""
    if isinstance(schema, dict) and "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1], None
    return None, json.dumps(schema, separators=(", ", ": "))


def operations(document):
    """Every operation, in the document's order, as the page lists it."""
    listed = []
    for path, item in document["paths"].items():
        for method in (m for m in METHODS if m in item):
            op = item[method]
            parameters = []
            for raw in op.get("parameters", []):
                parameter = resolve(document, raw)
                parameters.append({"name": parameter["name"], "in": parameter["in"],
                                   "required": parameter.get("required", False),
                                   "description": prose(parameter.get("description", "")),
                                   "schema": schema_label(parameter.get("schema", {}))})
            body = None
            if "requestBody" in op:
                request_body = resolve(document, op["requestBody"])
                content = next(iter(request_body["content"].items()))
                body = {"required": request_body.get("required", False), "type": content[0],
                        "description": prose(request_body.get("description", "")),
                        "schema": schema_label(content[1].get("schema", {}))}
            answers = []
            for status, raw in op["responses"].items():
                answer = resolve(document, raw)
                content = next(iter(answer.get("content", {}).items()), None)
                answers.append({"status": status, "description": prose(answer.get("description", "")),
                                "type": content[0] if content else None,
                                "schema": schema_label(content[1].get("schema", {})) if content else None,
                                "headers": sorted(answer.get("headers", {}))})
            listed.append({"method": method.upper(), "path": path, "anchor": op["operationId"],
                           "summary": prose(op.get("summary", "")), "parameters": parameters, "body": body,
                           "answers": answers})
    return listed


def schemas(document):
    """[(name, the schema as indented JSON)] of the document's named schemas."""
    return [(name, json.dumps(schema, indent=2))
            for name, schema in document.get("components", {}).get("schemas", {}).items()]
