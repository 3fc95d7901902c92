"""`flask audit`: check the invariants against one snapshot of the database, print what breaks them, keep
the result for the dashboard. Exit 0 when sound, 1 on any breach, 2 on bad input, 3 when it could not run."""

import re
import sys
from datetime import datetime, timedelta, timezone

import click
import redis as redis_lib
from flask import current_app
from sqlalchemy.exc import DBAPIError

from ..extensions import db, redis_store

DURATION = re.compile(r"(\d+)([dhms])")
UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
CANNOT_RUN = 3


class When(click.ParamType):
    """An instant: ISO 8601 (UTC unless it names its offset), or a duration ago: 90s, 15m, 2h, 1d, 1h30m."""

    name = "WHEN"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime | timedelta):
            return value
        text = value.strip()
        if re.fullmatch(r"(\d+[dhms])+", text):
            ago = sum((timedelta(**{UNITS[unit]: int(n)}) for n, unit in DURATION.findall(text)), timedelta())
            if not ago:
                self.fail(f"{value!r} is no time ago; give a duration such as 15m", param, ctx)
            return ago
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is neither an ISO 8601 time (YYYY-MM-DDTHH:MM:SS, UTC unless it ends in an "
                      f"offset) nor a duration ago (90s, 15m, 2h, 1d, 1h30m)", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _instant(when, now):
    return now - when if isinstance(when, timedelta) else when


@click.command("audit")
@click.option("--product", "products", multiple=True, metavar="SLUG",
              help="Audit this sale only (repeat for several): its holds, ledger, stock and payments.")
@click.option("--since", type=When(), help="Only holds placed at or after WHEN (ISO 8601, or a duration ago "
                                           "such as 15m, 2h, 1d). Sales with such a hold are checked whole.")
@click.option("--until", type=When(), help="Only holds placed before WHEN.")
@click.option("--sample", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Breaches printed per check (every breach is counted).")
def audit_command(products, since, until, sample):
    """Check the invariants against one snapshot of the database; exit 1 on any breach.

    The whole audit reads one consistent snapshot (it never blocks the sale and is exact at one instant
    while the sale runs: safe to run from cron every minute), computes each invariant in SQL and prints
    at most --sample breaches per check with their count. The result is kept for the admin dashboard.
    Exit 0 when sound, 1 on any breach, 2 on bad input, 3 when the database or Redis did not answer.
    """
    from ..gateways import gateway_from_config
    from ..inventory.audit import Scope, UnknownProduct, audit_report, last

    now = datetime.now(timezone.utc)
    if since is not None and _instant(since, now) > now:
        raise click.BadParameter("is in the future: no hold has been placed since then", param_hint="--since")
    if since is not None and until is not None and _instant(since, now) >= _instant(until, now):
        raise click.BadParameter("must be before --until", param_hint="--since")
    config = current_app.config
    redis = redis_store.client
    try:
        report = audit_report(db.session, gateway_from_config(config, redis), config["PAYMENT_FINAL_SECONDS"],
                              Scope(tuple(dict.fromkeys(products)), since, until), sample)
    except UnknownProduct as unknown:
        raise click.BadParameter(str(unknown), param_hint="--product") from None
    except (DBAPIError, redis_lib.RedisError) as error:
        click.echo(f"audit could not run: {error.__class__.__name__}: {str(error).splitlines()[0]}", err=True)
        sys.exit(CANNOT_RUN)
    _print(report, sample)
    try:
        last.record(redis, report)
    except redis_lib.RedisError as error:
        click.echo(f"warning: the result could not be kept for the dashboard ({error.__class__.__name__})",
                   err=True)
    if not report.passed:
        sys.exit(1)


def _print(report, sample):
    where = f"at {report.at.isoformat(timespec='seconds')} ({report.scope}, {report.seconds:.2f} s)"
    for finding in report.findings:
        for breach in finding.sample:
            click.echo(f"BREACH {breach}", err=True)
        if finding.count > sample:
            click.echo(f"  ... and {finding.count - sample:,} more found by {finding.check} "
                       f"(--sample shows more)", err=True)
    if report.passed:
        click.echo(f"audit passed {where}: no oversell, one outcome per hold, ledger balanced, "
                   "idempotency and per-customer limits kept, money follows every outcome, the shop told of "
                   "every confirmed order")
        return
    kinds = ", ".join(f"{invariant}: {count:,}" for invariant, count in report.by_invariant().items() if count)
    plural = "es" if report.count != 1 else ""
    click.echo(f"audit failed {where}: {report.count:,} breach{plural} ({kinds})", err=True)
