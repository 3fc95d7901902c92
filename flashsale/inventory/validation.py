"""Validating what a buyer sends: strict types, clear per-field messages, nothing coerced silently."""

import re

from ..errors import InvalidInput

EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
HOLD_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,40}$")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_EMAIL_LENGTH = 254


def normalise_email(email):
    """Lower-case, trimmed email, or raise InvalidInput naming the email field."""
    if not isinstance(email, str) or not email.strip():
        raise InvalidInput({"email": "An email address is required."})
    email = email.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidInput({"email": f"At most {MAX_EMAIL_LENGTH} characters."})
    if not EMAIL_RE.match(email) or "." not in email.rsplit("@", 1)[1] or ".." in email:
        raise InvalidInput({"email": "Enter a valid email address, like you@example.com."})
    return email


def validate_quantity(quantity, max_quantity):
    """The quantity as given if it is a whole number from 1 to max_quantity, else InvalidInput."""
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise InvalidInput({"quantity": "Must be a whole number."})
    if not 1 <= quantity <= max_quantity:
        raise InvalidInput({"quantity": f"Must be between 1 and {max_quantity}."})
    return quantity


def validate_hold_request(email, quantity, max_quantity):
    """Normalised (email, quantity) for a hold, reporting every bad field at once."""
    fields, valid = {}, []
    for check in (lambda: normalise_email(email), lambda: validate_quantity(quantity, max_quantity)):
        try:
            valid.append(check())
        except InvalidInput as error:
            fields.update(error.fields)
    if fields:
        raise InvalidInput(fields)
    return tuple(valid)


def validate_idempotency_key(key):
    """The key if absent or 1-128 printable ASCII characters, else InvalidInput."""
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(key):
        raise InvalidInput({"Idempotency-Key": "1 to 128 printable ASCII characters, no spaces."})
    return key


def valid_hold_id(hold_id):
    """True when the string could be a hold token (anything else is simply not found)."""
    return isinstance(hold_id, str) and bool(HOLD_ID_RE.match(hold_id))
