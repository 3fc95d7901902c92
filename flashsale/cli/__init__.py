"""The `flask` commands (seed, worker, audit, simulate, orders, webhooks); each imports what it runs when run."""

from ..simulate.command import simulate_command
from .audit import audit_command
from .orders import orders_command
from .seed import seed_command
from .webhooks import webhooks_command
from .worker import worker_command


def init_app(app):
    """Register the commands on `flask`."""
    for command in (seed_command, worker_command, audit_command, simulate_command, orders_command,
                    webhooks_command):
        app.cli.add_command(command)
