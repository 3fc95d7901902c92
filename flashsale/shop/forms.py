"""The shop's forms: buying (placing a hold) and acting on a hold. Flask-WTF adds the CSRF token to each."""

import secrets

from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, IntegerField
from wtforms.validators import InputRequired, Length, NumberRange, ValidationError

from ..errors import InvalidInput
from ..inventory.validation import MAX_EMAIL_LENGTH, normalise_email


def new_idempotency_key():
    """A fresh key for one rendering of the buy form: resubmitting that rendering makes one hold."""
    return "web-" + secrets.token_urlsafe(24)


class HoldForm(FlaskForm):
    """Email and quantity for a hold, plus the rendering's idempotency key (a hidden field)."""

    email = EmailField("Email", validators=[
        InputRequired("An email address is required."), Length(max=MAX_EMAIL_LENGTH)])
    quantity = IntegerField("Quantity", default=1, validators=[
        InputRequired("Choose how many you want."),
        NumberRange(min=1, message="At least one.")])
    idempotency_key = HiddenField()
    admission = HiddenField()  # a waiting-room product's signed admission (checked by the domain)

    def __init__(self, *args, max_quantity=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_quantity = max_quantity

    def validate_email(self, field):
        """The same email rules as the API (the domain's validation is the single source)."""
        try:
            normalise_email(field.data)
        except InvalidInput as error:
            raise ValidationError(error.fields["email"]) from None

    def validate_quantity(self, field):
        """At most the per-customer limit (and the shop-wide maximum)."""
        if field.data is not None and field.data > self.max_quantity:
            raise ValidationError(f"At most {self.max_quantity} per customer.")

    def fresh_key(self):
        """Give this rendering its own idempotency key."""
        self.idempotency_key.data = new_idempotency_key()
        return self


class JoinForm(FlaskForm):
    """Join a waiting-room product's line: just the email."""

    email = EmailField("Email", validators=[
        InputRequired("An email address is required."), Length(max=MAX_EMAIL_LENGTH)])

    def validate_email(self, field):
        """The same email rules as the API."""
        try:
            normalise_email(field.data)
        except InvalidInput as error:
            raise ValidationError(error.fields["email"]) from None


class HoldActionForm(FlaskForm):
    """Confirm or release a hold: nothing to fill in but the CSRF token."""
