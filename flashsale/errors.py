"""Domain exceptions: each carries the contract's error code, HTTP status and the data behind it."""


class FlashsaleError(Exception):
    """Base of every refusal the domain can give; views map `code` and `status` onto answers."""

    code = "error"
    status = 400
    message = "The request could not be completed."

    def __init__(self, message=None, **details):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details


class InvalidInput(FlashsaleError):
    """One or more fields are wrong; `fields` maps each field name to what is wrong with it."""

    code, status, message = "invalid", 422, "Some fields are invalid."

    def __init__(self, fields, message=None):
        super().__init__(message, fields=fields)
        self.fields = fields


class NotFound(FlashsaleError):
    code, status, message = "not_found", 404, "No such product or hold."


class SaleNotOpen(FlashsaleError):
    code, status, message = "sale_not_open", 409, "This sale is not open."


class SoldOut(FlashsaleError):
    code, status, message = "sold_out", 409, "Not enough stock left."


class LimitExceeded(FlashsaleError):
    code, status, message = "limit_exceeded", 409, "That would exceed the per-customer limit."


class HoldExpired(FlashsaleError):
    code, status, message = "hold_expired", 409, "This hold has expired."


class HoldReleased(FlashsaleError):
    code, status, message = "hold_released", 409, "This hold was released."


class HoldConfirmed(FlashsaleError):
    code, status, message = "hold_confirmed", 409, "This hold is already confirmed."


class PaymentInProgress(FlashsaleError):
    """A confirmation was accepted: the payment decides now, so the shopper can no longer release."""

    code, status = "payment_in_progress", 409
    message = "Payment for this hold is in progress; it can no longer be released."


class IdempotencyMismatch(FlashsaleError):
    code, status = "idempotency_mismatch", 422
    message = "This Idempotency-Key was already used with a different request."


class NotAdmitted(FlashsaleError):
    """A waiting-room product's hold without a valid admission (missing, forged, expired, used, not yours)."""

    code, status = "not_admitted", 403
    message = "This sale has a waiting room: join the line and wait for your turn."


class NoWaitingRoom(FlashsaleError):
    code, status, message = "no_waiting_room", 409, "This product has no waiting room: buy directly."


class RateLimited(FlashsaleError):
    code, status, message = "rate_limited", 429, "Too many requests; slow down."


class Unavailable(FlashsaleError):
    """The lock was not acquired in time, or Redis or PostgreSQL is down: try again shortly."""

    code, status, message = "unavailable", 503, "Busy or temporarily unavailable; retry shortly."


class LockBusy(Unavailable):
    message = "Too many buyers at once; retry shortly."
