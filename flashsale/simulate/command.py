"""`flask simulate`: its options, and what needs the app (the reseed, the in-process audit).

Only click is imported here: the driver (asyncio, aiohttp) loads when the command runs, not in every
process that registers the command.
"""

import json
import random
import sys

import click
from flask.cli import with_appcontext

from .plans import Crowd


@click.command("simulate")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True, help="The running server.")
@click.option("--scenario", help="Take the crowd (and product) from seeds/SCENARIO.yaml.")
@click.option("--product", help="Product slug (default: the scenario crowd's product).")
@click.option("--buyers", type=int, help="How many distinct buyers.")
@click.option("--arrival", type=click.Choice(["burst", "ramp"]), help="All at once, or spread out.")
@click.option("--ramp-seconds", type=float, help="Spread arrivals over this many seconds (ramp).")
@click.option("--quantity", type=int, help="Units each buyer asks for.")
@click.option("--confirm-share", type=float, help="Share of winners who confirm.")
@click.option("--abandon-share", type=float, help="Share of winners who let the hold lapse.")
@click.option("--release-share", type=float, help="Share of winners who release the hold.")
@click.option("--retry-share", type=float, help="Share of buyers who retry a 503/429 after Retry-After.")
@click.option("--max-retries", type=int, help="Retries per retrying buyer (default 3).")
@click.option("--concurrency", type=int, default=256, show_default=True,
              help="Requests in flight at most (latency is timed from sending, not from queueing).")
@click.option("--settle-seconds", type=float, default=30, show_default=True,
              help="How long to wait for the worker to decide confirmations.")
@click.option("--wait-expiry", is_flag=True, help="Also wait for abandoned holds to expire.")
@click.option("--reseed", is_flag=True,
              help="Start the scenario's sale over first, as `flask seed SCENARIO --reset --delete-paid-orders`: "
                   "its holds and orders are deleted, paid ones too, since a simulation confirms holds "
                   "(needs the server's DATABASE_URL; never point it at a live shop).")
@click.option("--seed", "rng_seed", type=int, help="Random seed for reproducible plans.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_appcontext
def simulate_command(url, scenario, product, buyers, arrival, ramp_seconds, quantity, confirm_share,
                     abandon_share, release_share, retry_share, max_retries, concurrency, settle_seconds,
                     wait_expiry, reseed, rng_seed, as_json):
    """Fire a crowd of buyers at a running server and report what they got (exit 1 on oversell)."""
    url = url.rstrip("/")
    spec = {}
    if scenario:
        from ..inventory.seeding import load_scenario

        try:
            loaded = load_scenario(scenario)
        except LookupError as error:
            raise click.ClickException(str(error)) from None
        spec = dict(loaded.crowd) or {}
        spec.setdefault("product", loaded.products[0]["slug"])
        if reseed:
            _reseed(loaded)
    elif reseed:
        raise click.UsageError("--reseed needs --scenario")
    if not (product or spec.get("product")):
        raise click.UsageError("give --scenario NAME or --product SLUG")
    try:
        crowd = Crowd.from_spec(spec, product=product, buyers=buyers, arrival=arrival,
                                ramp_seconds=ramp_seconds, quantity=quantity, confirm_share=confirm_share,
                                abandon_share=abandon_share, release_share=release_share,
                                retry_share=retry_share, max_retries=max_retries)
    except (TypeError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    import asyncio

    from .driver import ServerUnreachable, simulate
    from .report import render

    try:
        report = asyncio.run(simulate(url, crowd, random.Random(rng_seed), concurrency, settle_seconds,
                                      wait_expiry, audit_here, reseeded=bool(scenario and reseed)))
    except ServerUnreachable as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
    if not report["ok"]:
        sys.exit(1)


def _reseed(loaded):
    """Start the scenario's sale over, paid orders included: the previous simulation confirmed some."""
    from flask import current_app

    from ..extensions import db, redis_store
    from ..gateways import forget_demo_charges
    from ..inventory.seeding import reset

    report = reset(db.session, redis_store.client, loaded, delete_paid=True)
    db.session.rollback()  # nothing open while the fake gateway writes its own table (SQLite: one writer)
    forget_demo_charges(current_app.config, redis_store.client, report.payment_keys)
    for item in report.products:
        click.echo(f"reseeded {item.product.slug}: {item.product.total_stock} units (deleted {item.holds} holds, "
                   f"{item.paid} paid, and {item.payments} payments)", err=True)
    # End the transaction those reads began: on SQLite it holds the writer lock the server needs.
    db.session.remove()


def audit_here(slug, hold_ids):
    """Run the audit in-process when this app's database is the server's, else say why not."""
    from flask import current_app
    from sqlalchemy import func, select

    from ..extensions import db, redis_store
    from ..gateways import gateway_from_config
    from ..inventory.audit import audit
    from ..models import Order, Product

    try:
        session = db.session
        if hold_ids:
            found = session.execute(select(func.count()).select_from(Order)
                                    .where(Order.id.in_(hold_ids))).scalar_one()
            same = found == len(hold_ids)
        else:
            same = session.execute(select(Product.id).where(Product.slug == slug)).first() is not None
        if not same:
            session.rollback()
            return {"status": "skipped", "note": "this DATABASE_URL is not the server's database "
                                                 "(run with the server's DATABASE_URL to audit)"}
        config = current_app.config
        gateway = gateway_from_config(config, redis_store.client)
        breaches = [str(b) for b in audit(session, gateway, config["PAYMENT_FINAL_SECONDS"])]
    except Exception as error:  # noqa: BLE001 - any failure to reach the database means no audit
        db.session.rollback()
        return {"status": "skipped", "note": f"no database access ({error.__class__.__name__})"}
    return {"status": "failed" if breaches else "passed", "breaches": breaches}


