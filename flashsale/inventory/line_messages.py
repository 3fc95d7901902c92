"""What travels through a product's line in Redis: a buyer's request, and the answer its holder sends back."""

import json
from dataclasses import dataclass
from datetime import datetime

from .. import errors


@dataclass(frozen=True)
class Request:
    """One buyer's request as it waits in the line; deadline is when its buyer stops waiting (epoch s).

    The buyer chooses its hold's id, so that if Redis dies before the answer arrives it can still find
    out from the database whether its hold was committed.
    """

    ticket: str
    email: str
    quantity: int
    key: str | None
    digest: str | None
    deadline: float
    hold_id: str

    def encode(self):
        return json.dumps([self.ticket, self.email, self.quantity, self.key, self.digest,
                           self.deadline, self.hold_id])

    @classmethod
    def decode(cls, raw):
        return cls(*json.loads(raw))


@dataclass(frozen=True)
class Created:
    """The answer for a buyer whose hold was inserted and committed."""

    hold_id: str
    hold_expires_at: datetime
    created_at: datetime
    quantity: int = 0  # known to the holder that decided it (the stock snapshot counts it)


@dataclass(frozen=True)
class Replayed:
    """The answer for a buyer whose Idempotency-Key already made this hold."""

    hold_id: str


def encode_answer(answer):
    """An answer as the JSON a waiting buyer reads from its reply list."""
    if isinstance(answer, Created):
        return json.dumps({"created": [answer.hold_id, answer.hold_expires_at.isoformat(),
                                       answer.created_at.isoformat()]})
    if isinstance(answer, Replayed):
        return json.dumps({"replayed": answer.hold_id})
    return json.dumps({"refused": type(answer).__name__, "message": answer.message,
                       "details": answer.details})


REFUSALS = {cls.__name__: cls for cls in (
    errors.SoldOut, errors.LimitExceeded, errors.SaleNotOpen, errors.NotFound,
    errors.IdempotencyMismatch, errors.LockBusy, errors.Unavailable)}


def decode_answer(raw):
    """The Created, Replayed or refusal (an exception instance) a holder answered."""
    data = json.loads(raw)
    if "created" in data:
        hold_id, expires, created = data["created"]
        return Created(hold_id, datetime.fromisoformat(expires), datetime.fromisoformat(created))
    if "replayed" in data:
        return Replayed(data["replayed"])
    return REFUSALS.get(data["refused"], errors.Unavailable)(data["message"], **data["details"])


