"""`flask worker`: the RQ worker with the scheduler, the sweeper, reconciliation and a payment pool."""

import click
from flask import current_app


@click.command("worker")
@click.option("--burst", is_flag=True, help="Run until the queue is empty, then exit.")
def worker_command(burst):
    """Run an RQ worker with the scheduler (expiry jobs), the sweeper, reconciliation and a payment pool."""
    from ..worker.runner import run_worker

    run_worker(current_app._get_current_object(), burst)
