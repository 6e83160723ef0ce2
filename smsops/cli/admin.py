"""Account, tickets, users and the opt-out list."""

from __future__ import annotations

import contextlib
import enum
import functools
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from smsops import i18n
from smsops.cli.common import JsonOpt, OnOff, command, context, emit, kv_table, out

if TYPE_CHECKING:
    from smsops.services import drops

# The services are imported by the commands that use them: `--help` and the light commands
# load only what they need (#12, tests/test_fast_start.py).

account_app = typer.Typer(
    help="The account: plan (R1), phone field (R2), time zone of send times, language.",
    no_args_is_help=True,
)
tickets_app = typer.Typer(
    help="Prepaid tickets: one per message per recipient (R8), a ledger (R11).",
    no_args_is_help=True,
)
users_app = typer.Typer(
    help="The user table bulk deliveries select from: import CSV files, watch a drop folder.",
    no_args_is_help=True,
)
optout_app = typer.Typer(
    help="The opt-out (suppression) list: numbers never sent to (R16).", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add ``account``, ``tickets``, ``users`` and ``optout`` to the root ``app``."""
    app.add_typer(account_app, name="account")
    app.add_typer(tickets_app, name="tickets")
    app.add_typer(users_app, name="users")
    app.add_typer(optout_app, name="optout")


# --- account and tickets --------------------------------------------------------------


@account_app.command("show")
@command
def account_show(as_json: JsonOpt = False) -> None:
    """Show the plan (R1), the phone field (R2), the time zone, the language and the window.

    Changes nothing."""
    from smsops.services import account as accounts

    with context(as_json) as ctx:
        acct = accounts.get_account(ctx)
    emit(as_json, acct.to_dict(), lambda: out.print(kv_table(acct.to_dict())))


@account_app.command("set")
@command
def account_set(
    plan: Annotated[
        str | None,
        typer.Option(
            metavar="PLAN",
            help="free, light, standard or premium; bulk SMS needs standard or above (R1).",
        ),
    ] = None,
    phone_field: Annotated[
        OnOff | None,
        typer.Option("--phone-field", help="Whether users' phone numbers are in use (R2)."),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(metavar="TZ", help="Time zone of send times, e.g. Asia/Tokyo."),
    ] = None,
    language: Annotated[
        str | None,
        typer.Option(
            metavar="LANG",
            help="ja or en: the language smsops speaks to this account's people, unless "
            "SMSOPS_LANG or the locale (LANG=ja_JP.UTF-8) says otherwise (#15).",
        ),
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(
            metavar="HH:MM-HH:MM|off",
            help="The sending window (quiet hours) in the account's time zone, e.g. "
            "09:00-20:00: sends outside it are refused and a send still running at its "
            "close pauses until it opens; off removes it.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change the plan, the phone field, the time zone, the language or the sending window.

    Options left out stay as they are.
    Example: smsops account set --plan standard --timezone Asia/Tokyo --window 09:00-20:00"""
    from smsops.services import account as accounts

    with context(as_json) as ctx:
        acct = accounts.set_account(
            ctx,
            plan=plan,
            timezone=timezone,
            language=language,
            window=window,
            phone_field=None if phone_field is None else phone_field is OnOff.on,
        )
    emit(as_json, acct.to_dict(), lambda: out.print(kv_table(acct.to_dict())))


@tickets_app.command("balance")
@command
def tickets_balance(as_json: JsonOpt = False) -> None:
    """Show the ticket balance (R11: the sum of the ledger)."""
    from smsops.services import account as accounts

    with context(as_json) as ctx:
        value = accounts.balance(ctx)
    emit(as_json, {"balance": value}, lambda: out.print(i18n.tickets(value)))


# "-5" is read as the count (and refused as not positive), not as an unknown option.
@tickets_app.command("add", context_settings={"ignore_unknown_options": True})
@command
def tickets_add(
    count: Annotated[int, typer.Argument(metavar="N", help="How many tickets to add.")],
    as_json: JsonOpt = False,
) -> None:
    """Buy tickets: add N to the balance.

    Recorded in the ledger (R11). N must be positive; the balance holds at most
    1,000,000,000."""
    from smsops.services import account as accounts

    with context(as_json) as ctx:
        value = accounts.add_tickets(ctx, count)
    emit(
        as_json,
        {"added": count, "balance": value},
        lambda: out.print(
            i18n._("added {count}; balance {balance}").format(
                count=i18n.number(count), balance=i18n.tickets(value)
            )
        ),
    )


# --- users and opt-outs ---------------------------------------------------------------

Encoding = Annotated[
    str,
    typer.Option(
        metavar="ENCODING",
        help="auto, utf-8, cp932 (Shift_JIS from Excel) or utf-16 (Unicode text)",
    ),
]


class ImportMode(enum.Enum):
    upsert = "upsert"
    replace = "replace"


@users_app.command("import")
@command
def users_import(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="User table CSV files.")],
    mode: Annotated[
        ImportMode,
        typer.Option(
            help="upsert: add and update users; replace: the files are a full export, and "
            "users missing from them become inactive (kept with their history, never "
            "selected)."
        ),
    ] = ImportMode.upsert,
    encoding: Encoding = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Add or update users from CSV files, all files or nothing.

    Each file has user_id and a phone column (R3). A problem is refused by file, row,
    line and column, and nothing is stored. With --mode replace, stored users the files
    do not hold become inactive (never deleted). Example: smsops users import members.csv
    --mode replace"""
    from smsops.services import people

    with context(as_json) as ctx:
        result = people.import_users(
            ctx, files, encoding=encoding, replace=mode is ImportMode.replace
        )

    def show() -> None:
        out.print(
            i18n._("imported {rows} rows; {users} users in total").format(
                rows=i18n.number(result.rows), users=i18n.number(result.users_total)
            )
        )
        if result.deactivated is not None:
            out.print(
                i18n._("{count} users not in the export are now inactive").format(
                    count=i18n.number(result.deactivated)
                )
            )

    emit(as_json, result.to_dict(), show)


# `users watch` takes the same modes
WatchMode = ImportMode


@users_app.command("watch")
@command
def users_watch(
    folder: Annotated[
        str,
        typer.Argument(
            metavar="DIR",
            help="The drop folder: a path, or a URL such as s3://bucket/drops (with the "
            "s3 or gcs extra installed).",
        ),
    ],
    every: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", min=1, help="Look again every SECONDS until stopped."),
    ] = None,
    mode: Annotated[
        WatchMode,
        typer.Option(
            help="upsert: add and update users; replace: each file is a full export, and "
            "users missing from it become inactive (kept, never selected)."
        ),
    ] = WatchMode.upsert,
    settle: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", min=0, help="A file changed this recently is still being written."
        ),
    ] = 10.0,
    encoding: Encoding = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Import each new file of a drop folder whole or not at all, in name order, then move
    it to processed/ or rejected/ (beside NAME.errors.csv); DIR/optouts/ takes opt-out
    lists. One pass, or one every SECONDS (one JSON document per pass)."""
    from smsops.services import drops

    looks = None
    with context(as_json) as ctx, _stopped_between_passes(every is not None) as stop:
        while True:
            done = drops.watch(
                ctx, folder, mode=mode.value, encoding=encoding, settle=settle, previous=looks
            )
            looks = done.looks
            if as_json or done.files or every is None:
                emit(as_json, done.to_dict(), functools.partial(_print_drop_pass, done))
            if every is None:
                return
            sys.stdout.flush()
            if stop.wait(every):  # Ctrl-C or SIGTERM: after the pass, nothing half done
                return


@contextlib.contextmanager
def _stopped_between_passes(looping: bool) -> Iterator[threading.Event]:
    """While ``users watch --every`` loops, Ctrl-C (SIGINT) and SIGTERM set the event it
    waits on instead of interrupting what runs: a pass under way finishes (an
    interruption in the middle could leave a lock of the store's pool held, and the
    process hung at exit), then the command ends with exit 0. A second Ctrl-C interrupts
    at once."""
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if looping and main else ()

    def handler(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


# what a pass did with a file, as a person reads it (#15); --json keeps the outcome's value
_OUTCOMES = {
    "imported": i18n.N_("imported"),
    "rejected": i18n.N_("rejected"),
    "skipped_duplicate": i18n.N_("skipped duplicate"),
    "still_being_written": i18n.N_("still being written"),
}


def _print_drop_pass(done: drops.DropPass) -> None:
    """Each file and what became of it, then the counts, in the reader's language."""
    from rich.table import Table

    _, number = i18n._, i18n.number
    if done.files:
        table = Table(_("file"), _("outcome"), _("rows"), _("detail"), box=None, pad_edge=False)
        for f in done.files:
            name = f.name if f.inbox == "users" else f"optouts/{f.name}"
            rows = "" if f.rows is None else number(f.rows)
            outcome = _OUTCOMES.get(f.outcome.value, f.outcome.value.replace("_", " "))
            table.add_row(name, _(outcome), rows, _drop_detail(f))
        out.print(table)
    out.print(done.human_summary())


def _drop_detail(f: drops.DropFile) -> str:
    """A file's detail line; a rejected file's rebuilt from its first problem in Japanese
    (the English line nests the problem in parentheses, no template's to take apart)."""
    from smsops.refusals import localize
    from smsops.services.drops import Outcome

    _ = i18n._
    if i18n.language() == "en" or f.outcome is not Outcome.rejected or not f.problems:
        return localize(f.detail)
    first = f.problems[0]
    where = [] if first.get("row") is None else [_("row {row}").format(row=first["row"])]
    column = first.get("column")
    where.append(_("column {column}").format(column=column) if column else _("table"))
    n = len(f.problems)
    count = i18n.ngettext("{n} problem", "{n} problems", n).format(n=i18n.number(n))
    said = f"{'、'.join(where)}：{localize(str(first['problem']))}{'。…' * (n > 1)}"
    return _("rejected, nothing imported: {count} ({first})").format(count=count, first=said)


@optout_app.command("import")
@command
def optout_import(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="CSV with a phone column.")],
    encoding: Encoding = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Add every number of a CSV file to the opt-out list (R16)."""
    from smsops.services import people

    with context(as_json) as ctx:
        result = people.optout_import(ctx, file, encoding=encoding)
    emit(as_json, result.to_dict(), lambda: out.print(result.describe()))


Phone = Annotated[str, typer.Argument(metavar="PHONE", help="A phone number, any usual form.")]


@optout_app.command("add")
@command
def optout_add(phone: Phone, as_json: JsonOpt = False) -> None:
    """Add one number to the opt-out list (R16): it is never sent to."""
    from smsops.services import people

    with context(as_json) as ctx:
        result = people.optout_add(ctx, phone)
    emit(as_json, result.to_dict(), lambda: out.print(result.describe()))


@optout_app.command("remove")
@command
def optout_remove(phone: Phone, as_json: JsonOpt = False) -> None:
    """Take one number off the opt-out list."""
    from smsops.services import people

    with context(as_json) as ctx:
        result = people.optout_remove(ctx, phone)
    emit(as_json, result.to_dict(), lambda: out.print(result.describe()))
