"""`flask webhooks status|retry`: what each endpoint is owed, and sending the failed deliveries now."""

import click
from flask import current_app

from ..extensions import db


@click.group("webhooks")
def webhooks_command():
    """Outbound webhooks to the shop (WEBHOOK_URLS): their deliveries per endpoint."""


@webhooks_command.command("status")
def status_command():
    """Pending (of which failing: retrying after a failed attempt), failed (retries ran out) and delivered
    events per endpoint, and how long the oldest undelivered one has waited."""
    from ..inventory import deliveries

    configured = current_app.config["WEBHOOK_ENDPOINTS"]
    found = {row.endpoint: row for row in deliveries.status(db.session)}
    if not configured and not found:
        click.echo("no endpoints: set WEBHOOK_URLS and WEBHOOK_SECRET to send events to the shop")
    for endpoint in dict.fromkeys((*configured, *found)):
        row = found.get(endpoint)
        note = "" if endpoint in configured else "  (no longer in WEBHOOK_URLS)"
        if row is None:
            click.echo(f"{endpoint}: nothing owed yet{note}")
            continue
        oldest = ("-" if row.oldest_undelivered_seconds is None
                  else _duration(row.oldest_undelivered_seconds))
        click.echo(f"{endpoint}: pending {row.pending:,} (failing {row.failing:,}), failed {row.failed:,}, "
                   f"delivered {row.delivered:,}, oldest undelivered {oldest}{note}")
    waiting = deliveries.unfanned(db.session)
    if waiting:
        click.echo(f"{waiting:,} events not yet handed to any endpoint (the worker does within SWEEP_SECONDS)")


@webhooks_command.command("retry")
@click.option("--endpoint", metavar="URL", help="Only this endpoint's deliveries (one of WEBHOOK_URLS).")
def retry_command(endpoint):
    """Send the failed deliveries now (and those waiting for their next retry), from this process."""
    from ..inventory import deliveries
    from ..worker import webhooks

    configured = current_app.config["WEBHOOK_ENDPOINTS"]
    if endpoint is not None and endpoint not in configured:
        raise click.BadParameter(f"{endpoint!r} is not one of WEBHOOK_URLS", param_hint="--endpoint")
    if not configured:
        raise click.UsageError("no endpoints: WEBHOOK_URLS is not set")
    count = deliveries.retry(db.session, endpoint)
    made = webhooks.deliver_webhooks()
    click.echo(f"{count:,} deliveries due again; {made:,} attempts made now")
    status_command.callback()


def _duration(seconds):
    """90 -> 1.5m, 5400 -> 1.5h: a waiting time as people read it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{int(seconds)}s"
