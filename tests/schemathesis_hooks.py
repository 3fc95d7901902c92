"""Schemathesis's hooks for tests/test_schemathesis.py (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks).

One check replaces schemathesis's `positive_data_acceptance`, keeping all of it but two refusals the
contract makes of requests JSON Schema cannot tell apart from valid ones:

- an Idempotency-Key already used with another body is refused with 422 `idempotency_mismatch` (design
  section 6, invariant 5), however valid each request is on its own. Schemathesis draws the same short
  keys ("0", "!") for many cases, so a later case can reuse an earlier case's key: the API keeping its
  promise, not rejecting valid data;
- a quantity sent as a float literal (`2.0`) is 422 `invalid` (tests/test_bad_input.py pins it: nothing
  is coerced), but JSON Schema's `integer` is a mathematical integer, which 2.0 is; the document says so.

Any other refusal of schema-valid data (a 422 for another field, a 400, a 415, ...) still fails the run,
as does a mismatch answered to a request that sent no key.
"""

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance


def _reused_key_refused(response, case):
    """True when the answer is 422 idempotency_mismatch to a request that sent an Idempotency-Key."""
    if response.status_code != 422 or not (case.headers or {}).get("Idempotency-Key"):
        return False
    try:
        return response.json()["error"]["code"] == "idempotency_mismatch"
    except (ValueError, KeyError, TypeError):
        return False


def _float_quantity_refused(response, case):
    """True when the answer is 422 invalid naming only `quantity`, sent as a float with no fraction."""
    quantity = case.body.get("quantity") if isinstance(case.body, dict) else None
    if response.status_code != 422 or not (isinstance(quantity, float) and quantity.is_integer()):
        return False
    try:
        error = response.json()["error"]
        return error["code"] == "invalid" and set(error["fields"]) == {"quantity"}
    except (ValueError, KeyError, TypeError):
        return False


@schemathesis.check
def valid_data_is_accepted_unless_its_key_was_used(ctx, response, case):
    """positive_data_acceptance but for the two refusals the module docstring names."""
    if _reused_key_refused(response, case) or _float_quantity_refused(response, case):
        return None
    return positive_data_acceptance(ctx, response, case)
