"""Command-line verbs: seed, worker, audit (and simulate, in its own module)."""

import sys
import threading

import click
import redis as redis_lib
from flask import current_app

from . import keys
from .extensions import db, redis_store
from .simulate import simulate_command


def init_app(app):
    """Register the commands on `flask`."""
    for command in (seed_command, worker_command, audit_command):
        app.cli.add_command(command)
    app.cli.add_command(simulate_command)


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
    from .seeding import PaidOrdersExist, describe, load_scenario, scenario_names

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
    from .seeding import seed

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
    from .gateways import forget_demo_charges
    from .seeding import reset

    report = reset(db.session, redis_store.client, scenario, delete_paid=delete_paid)
    for item in report.products:
        product = item.product
        if product.created:
            click.echo(f"{product.slug}: created, {_window(product)}")
            continue
        click.echo(f"{product.slug}: started over, {_window(product)}; deleted {item.holds} holds "
                   f"({item.paid} paid), {item.payments} payments, {item.events} ledger events, "
                   f"{item.redis_keys} Redis keys")
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


@click.command("worker")
@click.option("--burst", is_flag=True, help="Run until the queue is empty, then exit.")
def worker_command(burst):
    """Run an RQ worker with the scheduler (expiry jobs), the sweeper, reconciliation and a payment pool."""
    from rq import SimpleWorker

    from .payment_pool import PaymentPool, install

    config = current_app.config
    # The worker blocks on Redis for long stretches, so it gets a connection without a read timeout.
    connection = redis_lib.Redis.from_url(config["REDIS_URL"])
    queue = redis_store.queue.__class__(config["QUEUE_NAME"], connection=connection)
    stop = threading.Event()
    ticker = threading.Thread(target=_sweep_ticker, args=(connection, queue, config, stop),
                              daemon=True, name="sweep-ticker")
    ticker.start()
    # SimpleWorker runs jobs in this process, inside this app context: no fork per job, pooled
    # database connections reused, and jobs see the same configuration as the command.
    worker = SimpleWorker([queue], connection=connection)
    # Payment jobs hand their gateway calls to this pool, so many charges are in flight at once.
    pool = PaymentPool(current_app._get_current_object(), config["PAYMENT_CONCURRENCY"])
    install(pool)
    try:
        worker.work(with_scheduler=True, burst=burst)
    finally:
        stop.set()
        pool.shutdown()  # a warm shutdown finishes the charges in flight
        install(None)


def _sweep_ticker(connection, queue, config, stop):
    """Every SWEEP_SECONDS, one worker across the cluster enqueues the sweeper and reconciliation at
    the queue's front (so a flood of other jobs never starves them)."""
    from .jobs import reconcile_payments, sweep_expired_holds

    period = config["SWEEP_SECONDS"]
    while not stop.is_set():
        try:
            # SET NX PX: whichever worker claims this period enqueues; the others skip it.
            if connection.set(keys.sweep_tick(), "1", nx=True, px=int(period * 1000 * 0.9)):
                for job, job_id in ((reconcile_payments, "reconcile-payments"),
                                    (sweep_expired_holds, "sweep-expired-holds")):
                    queue.enqueue(job, job_id=job_id, at_front=True, result_ttl=60, failure_ttl=3600)
        except redis_lib.RedisError:
            pass  # Redis is down; the worker itself will report it, and we try again next period
        stop.wait(period)


@click.command("audit")
def audit_command():
    """Check the invariants against the database; exit 1 on any breach."""
    from .gateways import gateway_from_config
    from .inventory.audit import audit

    config = current_app.config
    gateway = gateway_from_config(config, redis_store.client)
    breaches = audit(db.session, gateway, config["PAYMENT_FINAL_SECONDS"])
    for breach in breaches:
        click.echo(f"BREACH {breach}", err=True)
    if breaches:
        sys.exit(1)
    click.echo("audit passed: no oversell, one outcome per hold, ledger balanced, "
               "idempotency and per-customer limits kept, money follows every outcome")
