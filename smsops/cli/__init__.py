"""The ``smsops`` command line: a thin front door over the services.

Every command takes ``--json`` (one JSON document on stdout). A refusal prints one line
on stderr and exits 1; usage errors exit 2.

Each module's ``register(app)`` adds its commands and groups to the root app here, in the
order ``--help`` lists them; importing a module registers nothing anywhere.
"""

import typer

from smsops.cli import admin, history, replies, running, sending
from smsops.cli.common import SmsopsGroup

app = typer.Typer(
    cls=SmsopsGroup,
    help="Bulk SMS campaigns for Japan: users, tickets, opt-outs, bulk and individual "
    "sends, their history, replies and the scheduler. Every command takes --json.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
admin.register(app)
sending.register(app)
history.register(app)
running.register(app)
replies.register(app)


def main() -> None:
    app()


__all__ = ["app", "main"]
