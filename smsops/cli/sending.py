"""Bulk deliveries, individual sends, resends and dispatching (R1–R13, R15)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text
from typer._click.exceptions import UsageError  # exit 2, as the other usage errors

from smsops import i18n
from smsops.cli.common import (
    DeliveryId,
    JsonOpt,
    check_csv_path,
    command,
    context,
    emit,
    no_live_display,
    out,
    parse_send_time,
    write_csv_files,
)
from smsops.errors import RuleError
from smsops.i18n import _
from smsops.refusals import localize

# The services are imported by the commands that use them: `--help` and the light commands
# load only what they need (#12, tests/test_fast_start.py).
if TYPE_CHECKING:
    from smsops.services import deliveries as dl

bulk_app = typer.Typer(
    help="Bulk deliveries: preview one (R13), then create it (R1-R13).", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add ``send``, ``resend``, ``dispatch``, ``dispatch-due`` and ``bulk`` to ``app``."""
    app.command("send")(send)
    app.command("resend")(resend)
    app.command("dispatch")(dispatch_one)
    app.command("dispatch-due")(dispatch_due)
    app.add_typer(bulk_app, name="bulk")


# --- bulk -----------------------------------------------------------------------------

Messages = Annotated[
    list[str],
    typer.Option(
        "-m",
        "--message",
        metavar="TEXT",
        help="A message, at most 70 characters, no %tags% (R6, R7); repeat -m for a second.",
    ),
]
At = Annotated[
    str | None,
    typer.Option(
        "--at",
        metavar="DATETIME",
        parser=parse_send_time,
        help="Send time, ISO 8601 (2026-12-01 10:00), in the account's time zone unless it "
        "has an offset. Leave it out to send now; an empty one is refused.",
    ),
]
OutsideWindow = Annotated[
    bool,
    typer.Option(
        "--outside-window",
        help="Send outside the account's sending window on purpose (#11): refused without "
        "it, and sent to the end without pausing at the window's close.",
    ),
]
UsersFiles = Annotated[
    list[Path] | None,
    typer.Option(
        "--users", metavar="FILE", help="Select from this CSV instead of the stored users."
    ),
]
Query = Annotated[
    str | None,
    typer.Option(
        "--query",
        help="Select users by their columns (README: the selection language), "
        "e.g. \"tags == 'vip' & phone.str.startswith('090')\".",
    ),
]


def show_preview(p: dl.Preview) -> None:
    """The confirmation screen (R13), in the reader's language (#15). The console reads no
    markup: message texts, queries and names are shown exactly as they will be sent."""
    print_confirmation(confirmation_lines(p))


def confirmation_lines(p: dl.Preview) -> list[tuple[str, str]]:
    """The confirmation (R13) as (label, text) lines in the reader's language (#15): the
    CLI prints them, the notebook and the Prefect artifact show the same."""
    when = i18n.when(p.scheduled_at, p.timezone) if p.scheduled_at else _("now (immediately)")
    lines = [
        (_("Recipients"), i18n.number(p.recipients)),
        (_("Send at"), when),
        *completion_lines(p),
    ]
    if p.sample:
        more = (
            _(" … and {n} more").format(n=i18n.number(p.recipients - len(p.sample)))
            if p.recipients > len(p.sample)
            else ""
        )
        lines.append(("", "  " + ", ".join(p.sample) + more))
    for m in p.messages:
        label = _("Message {number}").format(number=m.number)
        lines.append((label, f"({m.length}/70): {m.text}"))
    enough = (
        _("short by {tickets}").format(tickets=i18n.tickets(p.shortfall))
        if p.shortfall
        else _("enough")
    )
    lines.append(
        (
            _("Tickets"),
            _("needed {needed} ({recipients} × {messages}), balance {balance} — {enough}").format(
                needed=i18n.tickets(p.tickets_needed),
                recipients=i18n.number(p.recipients),
                messages=len(p.messages),
                balance=i18n.tickets(p.balance),
                enough=enough,
            ),
        )
    )
    lines.append((_("Selection"), localize(p.diagnosis)))
    return lines


def completion_lines(p: dl.Preview) -> list[tuple[str, str]]:
    """When the last message leaves at the rate cap, and the warnings (#11)."""
    from smsops.services.estimates import last_message, warning_lines

    c = p.completion
    if c is None:
        return []
    lines = [(_("Last message"), last_message(c, p.timezone))]
    return lines + [(_("Warning"), w) for w in warning_lines(c)]


def print_confirmation(lines: list[tuple[str, str]]) -> None:
    for label, text in lines:
        out.print(Text.assemble((label, "bold"), f" {text}") if label else text)


@bulk_app.command("preview")
@command
def bulk_preview(
    message: Messages,
    at: At = None,
    users: UsersFiles = None,
    query: Query = None,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Also write the whole recipient list to this CSV file."),
    ] = None,
    excluded: Annotated[
        Path | None,
        typer.Option(
            "--excluded",
            help="Also write every user left out, and why (R4), to this CSV file: "
            "user_id, reason, phone, duplicate_of, kept_by.",
        ),
    ] = None,
    unmasked: Annotated[
        bool,
        typer.Option("--unmasked", help="With --excluded: full phone numbers (masked by default)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show what a bulk delivery would send, to whom, when and for how many tickets (R13).

    Says why users were left out (R4). Saves and sends nothing.
    Example: smsops bulk preview -m "Winter sale" --query "tags == 'vip'" --export list.csv"""
    from smsops.services import deliveries as dl

    if unmasked and excluded is None:
        raise UsageError("--unmasked applies to --excluded")
    files = [(o, f) for o, f in (("--export", export), ("--excluded", excluded)) if f is not None]
    for option, path in files:  # refused before the work, not after it
        check_csv_path(path, option)
    with context(as_json) as ctx:
        p = dl.preview_bulk(ctx, message, at=at, users_files=users or [], query=query)
    # R13: the full list, for review before confirming; R4: who is left out and why.
    # Both for Excel: a BOM, numbers as 090-1234-5678, no cell read as a formula.
    tables = {
        "--export": (p.recipient_list(), ["phone"]),
        "--excluded": (p.excluded_list(unmasked), ["phone", "duplicate_of"] if unmasked else []),
    }
    write_csv_files([(option, path, *tables[option]) for option, path in files])
    emit(as_json, p.to_dict(), lambda: show_preview(p))


@bulk_app.command("create")
@command
def bulk_create(
    message: Messages,
    at: At = None,
    users: UsersFiles = None,
    query: Query = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Confirm without asking (R13); needed off a terminal."),
    ] = False,
    outside_window: OutsideWindow = False,
    as_json: JsonOpt = False,
) -> None:
    """Save a bulk delivery once confirmed (R13) and send it now, or at --at (R12).

    Refused, with nothing saved, below the standard plan (R1), without enough tickets
    (R9) or outside the sending window (unless --outside-window). Selects recipients as
    `bulk preview` does."""
    from smsops.services import deliveries as dl
    from smsops.services import dispatch as dispatching

    with context(as_json) as ctx:
        p = dl.preview_bulk(ctx, message, at=at, users_files=users or [], query=query)
        if not yes:
            if as_json or not sys.stdin.isatty():
                raise RuleError(
                    "R13",
                    "a delivery is saved only once confirmed: review "
                    "`smsops bulk preview`, then add --yes",
                )
            with no_live_display():  # or the progress display erases the question
                show_preview(p)
                confirmed = typer.confirm(
                    _("Save and send this delivery?")
                    if p.scheduled_at is None
                    else _("Schedule this delivery?")
                )
            if not confirmed:
                raise RuleError("R13", "not confirmed; nothing was saved")
        created = dl.create_bulk(ctx, p, outside_window=outside_window)
        result = dispatching.send_if_due(ctx, created)
    emit(as_json, result.to_dict(), lambda: out.print(result.describe()))


@command
def send(
    phone: Annotated[str, typer.Argument(metavar="PHONE", help="A Japanese mobile number.")],
    message: Messages,
    outside_window: OutsideWindow = False,
    as_json: JsonOpt = False,
) -> None:
    """Send to one number now (individual send; never deduplicated).

    One ticket per message (R8, R9).
    Example: smsops send 090-1234-5678 -m "Your order has shipped"
    """
    from smsops.services import deliveries as dl
    from smsops.services import dispatch as dispatching

    with context(as_json) as ctx:
        created = dl.send_individual(ctx, phone, message, outside_window=outside_window)
        result = dispatching.send_if_due(ctx, created)
    emit(as_json, result.to_dict(), lambda: out.print(result.describe()))


@command
def resend(
    delivery_id: DeliveryId,
    individual: Annotated[
        bool, typer.Option("--individual", help="One individual send per failed number.")
    ] = False,
    phone: Annotated[
        str | None, typer.Option(metavar="PHONE", help="With --individual: only this number.")
    ] = None,
    at: At = None,
    outside_window: OutsideWindow = False,
    as_json: JsonOpt = False,
) -> None:
    """Send the failed (number, message) pairs of a delivery again (R15).

    As a new bulk delivery linked to it (through R8-R13 again), or with --individual one
    individual send per failed number. Sends now unless --at."""
    from smsops.services import deliveries as dl
    from smsops.services import dispatch as dispatching

    with context(as_json) as ctx:
        if individual:
            if at is not None:
                raise UsageError("--at applies to a bulk resend; individual sends go now")
            results = [
                dispatching.send_if_due(ctx, created)
                for created in dl.resend_individual(
                    ctx, delivery_id, phone, outside_window=outside_window
                )
            ]

            def human() -> None:
                for r in results:
                    out.print(r.describe())

            documents = [{**r.to_dict(), "resend_of": delivery_id} for r in results]
            emit(as_json, {"deliveries": documents}, human)
            return
        if phone:
            raise UsageError("--phone applies to --individual")
        created = dl.resend_bulk(ctx, delivery_id, at=at, outside_window=outside_window)
        result = dispatching.send_if_due(ctx, created)
    emit(
        as_json,
        {**result.to_dict(), "resend_of": delivery_id},
        lambda: out.print(result.describe()),
    )


@command
def dispatch_one(
    delivery_id: DeliveryId,
    join: Annotated[
        bool,
        typer.Option("--join", help="Help the dispatchers already sending it (parallel chunks)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send one delivery now (it must be due), or join the ones sending it."""
    from smsops.services import dispatch as dispatching

    with context(as_json) as ctx:
        result = dispatching.dispatch(ctx, delivery_id, join=join).to_dict()
    emit(
        as_json,
        result,
        lambda: out.print(
            _("delivery {id}: {status}; sent {sent}, errors {errors}").format(
                id=delivery_id,
                status=result["status"],
                sent=i18n.number(result["sent"]),
                errors=i18n.number(result["errors"]),
            )
        ),
    )


@command
def dispatch_due(as_json: JsonOpt = False) -> None:
    """Send every scheduled delivery whose time has come; resume any whose process died.

    `smsops serve` runs this on its interval."""
    from smsops.services import dispatch as dispatching

    with context(as_json) as ctx:
        results = [r.to_dict() for r in dispatching.dispatch_due(ctx)]

    def human() -> None:
        if not results:
            out.print(_("nothing due"))
        for r in results:
            out.print(
                _("delivery {id}: {status}; sent {sent}, errors {errors}").format(
                    id=r["delivery_id"],
                    status=r["status"],
                    sent=i18n.number(r["sent"]),
                    errors=i18n.number(r["errors"]),
                )
                + (_(" (resumed)") if r["resumed"] else "")
            )

    emit(as_json, {"dispatched": results}, human)
