"""The shoppers' server-rendered pages."""

from .routes import bp


def init_app(app):
    """Register the shop blueprint and the template filters its pages use."""
    app.register_blueprint(bp)
    app.add_template_filter(money)
    app.add_template_filter(utc)
    app.add_template_filter(iso_ms)


def money(cents, currency="usd"):
    """Integer cents as a price: 49999 -> "$499.99" (in another currency: "499.99 EUR")."""
    amount = f"{cents // 100:,}.{cents % 100:02d}"
    return f"${amount}" if (currency or "usd") == "usd" else f"{amount} {currency.upper()}"


def utc(moment):
    """A readable UTC time: "22 Nov 2026, 14:05 UTC"."""
    return moment.strftime("%-d %b %Y, %H:%M UTC")


def iso_ms(moment):
    """ISO 8601 UTC with milliseconds, for scripts to parse."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
