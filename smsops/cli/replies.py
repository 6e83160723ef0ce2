"""Replies received (R16): every one kept, refusals and the rest."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from smsops import i18n
from smsops.cli.common import JsonOpt, cell, command, context, emit, out
from smsops.domain.vocabulary import ReplyAction

# The services are imported by the commands that use them: `--help` and the light commands
# load only what they need (#12, tests/test_fast_start.py).

replies_app = typer.Typer(
    help="Replies received: refusals (opted out), those to review, the rest.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add ``replies`` to the root ``app``."""
    app.add_typer(replies_app, name="replies")


Action = ReplyAction  # the choices of --action


@replies_app.command("list")
@command
def replies_list(
    action: Annotated[
        Action | None, typer.Option(help="Only replies smsops handled this way.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Only the newest N.")] = None,
    show_numbers: Annotated[
        bool,
        typer.Option("--show-numbers", help="Show senders' numbers in full (personal data)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Every reply received, newest first: when, sender (masked), text, and what smsops
    did with it (opted_out, review, ignored) and why."""
    from smsops.services import inbound

    with context(as_json) as ctx:
        rows = inbound.list_replies(
            ctx,
            action=action.value if action else None,
            limit=limit,
            unmasked=show_numbers,
        )

    def human() -> None:
        table = Table("id", "received", "sender", "text", "action", "why")
        for r in rows:
            table.add_row(
                str(r.id), cell(r.received_at), r.sender, escape(r.text), r.action, cell(r.reason)
            )
        out.print(table)
        review = sum(r.action == ReplyAction.REVIEW for r in rows)
        out.print(
            i18n._("{n} replies, {review} to review").format(
                n=i18n.number(len(rows)), review=i18n.number(review)
            )
        )

    emit(as_json, {"replies": [r.to_dict() for r in rows]}, human)
