"""`flask seed`: load a scenario from seeds/ (idempotent), or start its sale over with --reset."""

import click
from flask import current_app

from ..extensions import db, redis_store


@click.command("seed")
@click.argument("scenario", required=False)
@click.option("--list", "list_", is_flag=True, help="List the scenarios and what each one stages.")
@click.option("--reset", is_flag=True,
              help="Start the scenario's sale over: delete its products' holds, orders, payments and ledger, "
                   "apply the file (stock, prices) and place the windows from now.")
@click.option("--delete-paid-orders", is_flag=True,
              help="With --reset: also delete confirmed orders and those whose payment is under way "
                   "(a reset refuses them otherwise).")
def seed_command(scenario, list_, reset, delete_paid_orders):
    """Load seeds/SCENARIO.yaml: create its missing products, leave those already there as they are.

    Running it twice changes nothing: a product already in the database keeps its sale window, stock,
    holds, orders and ledger, and any way it differs from the file is reported, not applied. With --reset
    the scenario's sale starts over (its holds, orders, payments and ledger are deleted, and counted); it
    refuses to delete paid orders unless --delete-paid-orders is given too.
    """
    from ..inventory.seeding import PaidOrdersExist, describe, load_scenario, scenario_names

    if delete_paid_orders and not reset:
        raise click.UsageError("--delete-paid-orders only goes with --reset")
    if list_ or not scenario:
        if reset:
            raise click.UsageError("--reset needs a SCENARIO")
        for name in scenario_names():
            click.echo(describe(load_scenario(name)))
        return
    try:
        loaded = load_scenario(scenario)
    except LookupError as error:
        raise click.ClickException(str(error)) from None
    if not reset:
        _seed(loaded)
        return
    try:
        _reset(loaded, delete_paid_orders)
    except PaidOrdersExist as refusal:
        raise click.ClickException(
            f"refusing to reset {scenario}: it has paid orders ({refusal}). CONFIRMED orders were paid for "
            f"and CONFIRMING ones have a payment under way, so deleting them loses the record of money taken. "
            f"Nothing was deleted. Add --delete-paid-orders to delete them too.") from None


def _window(seeded):
    return (f"{seeded.total_stock} units, on sale {seeded.sale_starts_at:%Y-%m-%d %H:%M:%S} to "
            f"{seeded.sale_ends_at:%Y-%m-%d %H:%M:%S} UTC")


def _seed(scenario):
    """`flask seed SCENARIO`: say what was created and what was already there."""
    from ..inventory.seeding import seed

    differing = False
    for product in seed(db.session, redis_store.client, scenario):
        if product.created:
            click.echo(f"{product.slug}: created, {_window(product)}")
            continue
        click.echo(f"{product.slug}: already there, left as is ({_window(product)})")
        for difference in product.differences:
            click.echo(f"  differs from seeds/{scenario.name}.yaml: {difference}")
            differing = True
    if differing:
        click.echo(f"the differences were not applied: `flask seed {scenario.name} --reset` applies the file "
                   f"and starts that sale over (deleting its holds and orders)")


def _reset(scenario, delete_paid):
    """`flask seed SCENARIO --reset`: say what was deleted, product by product."""
    from ..gateways import forget_demo_charges
    from ..inventory.seeding import reset

    report = reset(db.session, redis_store.client, scenario, delete_paid=delete_paid)
    for item in report.products:
        product = item.product
        if product.created:
            click.echo(f"{product.slug}: created, {_window(product)}")
            continue
        click.echo(f"{product.slug}: started over, {_window(product)}; deleted {item.holds} holds "
                   f"({item.paid} paid), {item.payments} payments, {item.events} ledger events, "
                   f"{item.redis_keys} Redis keys")
    # End the transaction the reads above began: the fake gateway writes its own table in its own, and on
    # SQLite an open one holds the only write lock.
    db.session.rollback()
    if report.payment_keys and forget_demo_charges(current_app.config, redis_store.client,
                                                   report.payment_keys):
        click.echo(f"the fake gateway forgot the {len(report.payment_keys)} charges of the deleted payments")
    elif report.payment_keys:
        click.echo(f"payment idempotency keys deleted ({len(report.payment_keys)}; the gateway may still hold "
                   f"charges under them):")
        for key in report.payment_keys:
            click.echo(f"  {key}")
    if report.redis_error:
        click.echo(f"warning: Redis could not be cleared ({report.redis_error}); sold-out marks lapse within "
                   f"seconds and lines within a minute", err=True)
