"""`flask orders export`: every matching order as CSV or JSON lines, streamed, for fulfilment."""

import csv
import json
import os
import sys
import tempfile

import click

from ..extensions import db


@click.group("orders")
def orders_command():
    """Orders, for the shop's fulfilment."""


@orders_command.command("export")
@click.option("--product", metavar="SLUG", help="Only this product's orders.")
@click.option("--status", metavar="STATUS",
              help="Only orders in this status: PENDING, CONFIRMING, CONFIRMED, EXPIRED or RELEASED.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True,
              help="CSV with a header row, or one JSON object per line.")
@click.option("--output", metavar="FILE", default="-", show_default=True,
              help="Where to write (- is standard output). The file appears complete or not at all.")
def export_command(product, status, fmt, output):
    """Write every matching order: hold_id, product_slug, email, quantity, amount_cents, currency,
    status, created_at, confirmed_at, payment_reference.

    EMAILS ARE NOT MASKED: this is for fulfilment (shipping to the buyer); handle the file as personal
    data. Streams from the database in batches, so memory stays flat however many orders there are.
    An unknown product or status: a message and exit 2, with nothing written.
    """
    from ..inventory import export
    from ..inventory.audit.view import read_connection

    session = db.session
    try:
        product_id, status = export.check_filters(session, product, status)
    except export.UnknownFilter as unknown:
        raise click.BadParameter(str(unknown), param_hint=unknown.param) from None
    session.rollback()
    # A read-only connection (on SQLite it takes no writer lock, so the sale goes on meanwhile).
    with read_connection(db.engine) as connection:
        _export(export.orders(connection, product_id, status), fmt, output)


def _export(rows, fmt, output):
    if output == "-":
        _write(rows, fmt, sys.stdout)
        return
    # Written beside the target and renamed into place once complete: a failure midway leaves no half file.
    directory = os.path.dirname(os.path.abspath(output))
    handle, partial = tempfile.mkstemp(prefix=".orders-", suffix=".partial", dir=directory)
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as out:
            count = _write(rows, fmt, out)
        os.replace(partial, output)
    except BaseException:
        os.unlink(partial)
        raise
    click.echo(f"exported {count:,} orders to {output}", err=True)


def _write(rows, fmt, out):
    """Write rows to `out` in `fmt`; how many."""
    from ..inventory.export import COLUMNS

    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        write = writer.writerow
    else:
        def write(row):
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    for row in rows:
        write(row)
        count += 1
    return count
