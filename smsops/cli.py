"""The ``smsops`` command line: a thin front door over the services.

Every command takes ``--json`` (one JSON document on stdout). A refusal prints one line
on stderr and exits 1; usage errors exit 2.
"""

from __future__ import annotations

import csv
import enum
import functools
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from smsops import clock
from smsops.domain.phones import mask_phones
from smsops.errors import SmsopsError
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import dispatch as dispatching
from smsops.services import people
from smsops.services.context import Context
from smsops.settings import Settings

app = typer.Typer(
    help="Bulk SMS campaigns for Japan.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
account_app = typer.Typer(help="The account: plan, phone field, time zone.", no_args_is_help=True)
tickets_app = typer.Typer(
    help="Prepaid tickets (one per message per recipient).", no_args_is_help=True
)
users_app = typer.Typer(help="The user table.", no_args_is_help=True)
optout_app = typer.Typer(help="The opt-out (suppression) list.", no_args_is_help=True)
bulk_app = typer.Typer(help="Bulk deliveries.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Delivery history.", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(tickets_app, name="tickets")
app.add_typer(users_app, name="users")
app.add_typer(optout_app, name="optout")
app.add_typer(bulk_app, name="bulk")
app.add_typer(deliveries_app, name="deliveries")

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """Turn smsops errors into one line on stderr and exit 1 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SmsopsError as exc:
            if kwargs.get("as_json"):
                print(json.dumps(exc.to_dict(), ensure_ascii=False, default=str))
            err.print(f"smsops: {exc.message}", markup=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("smsops: interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug or an environment problem: still one clear line
            if os.environ.get("SMSOPS_DEBUG"):
                raise
            err.print(
                f"smsops: unexpected {type(exc).__name__}: {exc} "
                "(set SMSOPS_DEBUG=1 for the traceback)",
                markup=False,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def context(as_json: bool) -> Iterator[Context]:
    """The Context for one command, with a progress bar on a terminal."""
    show = not as_json and err.is_terminal
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not show,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(done: int, total: int, what: str) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        ctx = Context.open(Settings(), progress=progress)
        try:
            yield ctx
        finally:
            ctx.close()


def emit(as_json: bool, data: object, human: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(data, ensure_ascii=False, default=str))
    else:
        human()


def kv_table(rows: dict[str, object], title: str | None = None) -> Table:
    table = Table(show_header=False, title=title, box=None, pad_edge=False)
    for key, value in rows.items():
        table.add_row(f"[bold]{key}[/]", str(value))
    return table


class OnOff(enum.Enum):
    on = "on"
    off = "off"


# --- account and tickets --------------------------------------------------------------


@account_app.command("show")
@command
def account_show(as_json: JsonOpt = False) -> None:
    with context(as_json) as ctx:
        acct = accounts.get_account(ctx)
    emit(as_json, acct.to_dict(), lambda: out.print(kv_table(acct.to_dict())))


@account_app.command("set")
@command
def account_set(
    plan: Annotated[str | None, typer.Option(help="free, light, standard or premium")] = None,
    phone_field: Annotated[OnOff | None, typer.Option("--phone-field")] = None,
    timezone: Annotated[str | None, typer.Option(help="e.g. Asia/Tokyo")] = None,
    as_json: JsonOpt = False,
) -> None:
    with context(as_json) as ctx:
        acct = accounts.set_account(
            ctx,
            plan=plan,
            timezone=timezone,
            phone_field=None if phone_field is None else phone_field is OnOff.on,
        )
    emit(as_json, acct.to_dict(), lambda: out.print(kv_table(acct.to_dict())))


@tickets_app.command("balance")
@command
def tickets_balance(as_json: JsonOpt = False) -> None:
    with context(as_json) as ctx:
        value = accounts.balance(ctx)
    emit(as_json, {"balance": value}, lambda: out.print(f"{value:,} tickets"))


@tickets_app.command("add")
@command
def tickets_add(count: int, as_json: JsonOpt = False) -> None:
    with context(as_json) as ctx:
        value = accounts.add_tickets(ctx, count)
    emit(
        as_json,
        {"added": count, "balance": value},
        lambda: out.print(f"added {count:,}; balance {value:,} tickets"),
    )


# --- users and opt-outs ---------------------------------------------------------------

Encoding = Annotated[str, typer.Option(help="auto, utf-8 or cp932 (Shift_JIS from Excel)")]


@users_app.command("import")
@command
def users_import(files: list[Path], encoding: Encoding = "auto", as_json: JsonOpt = False) -> None:
    """Import user tables (CSV); all files or nothing."""
    with context(as_json) as ctx:
        result = people.import_users(ctx, files, encoding=encoding)
    emit(
        as_json,
        result.to_dict(),
        lambda: out.print(f"imported {result.rows:,} rows; {result.users_total:,} users in total"),
    )


@optout_app.command("import")
@command
def optout_import(file: Path, encoding: Encoding = "auto", as_json: JsonOpt = False) -> None:
    with context(as_json) as ctx:
        result = people.optout_import(ctx, file, encoding=encoding)
    emit(
        as_json,
        result,
        lambda: out.print(
            f"{result['added']:,} numbers added; {result['optouts_total']:,} on the opt-out list"
        ),
    )


@optout_app.command("add")
@command
def optout_add(phone: str, as_json: JsonOpt = False) -> None:
    with context(as_json) as ctx:
        result = people.optout_add(ctx, phone)
    emit(
        as_json,
        result,
        lambda: out.print(
            f"{'added' if result['added'] else 'already listed'}; "
            f"{result['optouts_total']:,} on the opt-out list"
        ),
    )


@optout_app.command("remove")
@command
def optout_remove(phone: str, as_json: JsonOpt = False) -> None:
    with context(as_json) as ctx:
        result = people.optout_remove(ctx, phone)
    emit(
        as_json,
        result,
        lambda: out.print(f"removed; {result['optouts_total']:,} on the opt-out list"),
    )


# --- bulk -----------------------------------------------------------------------------

Messages = Annotated[list[str], typer.Option("-m", "--message", help="Message text (1 or 2).")]
At = Annotated[str | None, typer.Option("--at", help="Send time, ISO 8601; default now.")]
UsersFiles = Annotated[
    list[Path] | None,
    typer.Option("--users", help="Select from this CSV instead of the stored users."),
]
Query = Annotated[
    str | None,
    typer.Option(
        "--query", help="pandas query over user columns, e.g. \"tags.str.contains('vip')\""
    ),
]


def show_preview(p: dl.Preview) -> None:
    """The confirmation screen (R13)."""
    when = clock.local_iso(p.scheduled_at, p.timezone) if p.scheduled_at else "now (immediately)"
    out.print(f"[bold]Recipients[/] {p.recipients:,}    [bold]Send at[/] {when}")
    if p.sample:
        more = (
            f" … and {p.recipients - len(p.sample):,} more" if p.recipients > len(p.sample) else ""
        )
        out.print("  " + ", ".join(p.sample) + more)
    for m in p.messages:
        out.print(f"[bold]Message {m.number}[/] ({m.length}/70): {m.text}", markup=True)
    ok = "green" if p.shortfall == 0 else "red"
    out.print(
        f"[bold]Tickets[/] needed {p.tickets_needed:,} ({p.recipients:,} × "
        f"{len(p.messages)}), balance {p.balance:,}"
        + (f" — [{ok}]short by {p.shortfall:,}[/]" if p.shortfall else f" — [{ok}]enough[/]")
    )
    out.print(f"[bold]Selection[/] {p.diagnosis}", markup=True)


@bulk_app.command("preview")
@command
def bulk_preview(
    message: Messages,
    at: At = None,
    users: UsersFiles = None,
    query: Query = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what a bulk delivery would send, to whom, when and for how many tickets."""
    with context(as_json) as ctx:
        p = dl.preview_bulk(ctx, message, at=at, users_files=users or [], query=query)
    emit(as_json, p.to_dict(), lambda: show_preview(p))


@bulk_app.command("create")
@command
def bulk_create(
    message: Messages,
    at: At = None,
    users: UsersFiles = None,
    query: Query = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm without asking.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Save a bulk delivery after confirmation; it is sent now unless --at is given."""
    with context(as_json) as ctx:
        p = dl.preview_bulk(ctx, message, at=at, users_files=users or [], query=query)
        if not yes:
            if as_json or not sys.stdin.isatty():
                raise SmsopsError(
                    "R13: a delivery is saved only once confirmed: review "
                    "`smsops bulk preview`, then add --yes"
                )
            show_preview(p)
            if not typer.confirm(
                "Save and send this delivery?"
                if p.scheduled_at is None
                else "Schedule this delivery?"
            ):
                raise SmsopsError("not confirmed; nothing was saved")
        created = dl.create_bulk(ctx, p)
        result = created.to_dict()
        if p.scheduled_at is None:
            sent = dispatching.dispatch(ctx, created.delivery_id)
            result.update(
                status=sent.status,
                sent=sent.sent,
                errors=sent.errors,
                tickets_used=sent.tickets_used,
            )
    emit(as_json, result, lambda: print_result(result))


def print_result(result: dict[str, object]) -> None:
    text = (
        f"delivery {result['delivery_id']}: {result['status']}, "
        f"{result['recipients']:,} recipients × {result['messages']} messages"
    )
    if result.get("scheduled_at"):
        text += f", scheduled for {result['scheduled_at']}"
    if "sent" in result:
        text += (
            f"; sent {result['sent']:,}, errors {result['errors']:,}, "
            f"tickets used {result['tickets_used']:,}"
        )
    out.print(text)


@app.command("send")
@command
def send(phone: str, message: Messages, as_json: JsonOpt = False) -> None:
    """Send to one number now (individual send; never deduplicated)."""
    with context(as_json) as ctx:
        created = dl.send_individual(ctx, phone, message)
        sent = dispatching.dispatch(ctx, created.delivery_id)
    result = {
        **created.to_dict(),
        "status": sent.status,
        "sent": sent.sent,
        "errors": sent.errors,
        "tickets_used": sent.tickets_used,
    }
    emit(as_json, result, lambda: print_result(result))


# --- history --------------------------------------------------------------------------


@deliveries_app.command("list")
@command
def deliveries_list(
    limit: Annotated[int | None, typer.Option(help="Only the newest N.")] = None,
    as_json: JsonOpt = False,
) -> None:
    with context(as_json) as ctx:
        rows = dl.list_deliveries(ctx, limit)

    def human() -> None:
        table = Table(
            "id",
            "kind",
            "status",
            "created",
            "scheduled",
            "recipients",
            "sent",
            "errors",
            "tickets",
            "resend of",
        )
        for r in rows:
            table.add_row(
                *(
                    str(r[k] if r[k] is not None else "")
                    for k in (
                        "id",
                        "kind",
                        "status",
                        "created_at",
                        "scheduled_at",
                        "recipients",
                        "sent",
                        "errors",
                        "tickets_used",
                        "resend_of",
                    )
                )
            )
        out.print(table)

    emit(as_json, {"deliveries": rows}, human)


@deliveries_app.command("show")
@command
def deliveries_show(
    delivery_id: int,
    limit: Annotated[int, typer.Option(help="Rows shown on the terminal.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    with context(as_json) as ctx:
        summary = dl.delivery_summary(ctx, delivery_id)
        frame = dl.delivery_items(ctx, delivery_id)
    if as_json:
        records = (
            frame[["seq", "phone", "message_no", "status", "error"]]
            .astype(object)
            .where(frame[["seq", "phone", "message_no", "status", "error"]].notna(), None)
        )
        print(
            json.dumps(
                {"delivery": summary, "items": records.to_dict("records")},
                ensure_ascii=False,
                default=str,
            )
        )
        return
    out.print(kv_table({k: v for k, v in summary.items() if v is not None}))
    table = Table("seq", "phone", "message", "status", "error", "delivery report")
    shown = frame.head(limit)
    for row, masked in zip(shown.itertuples(), mask_phones(shown["phone"]), strict=True):
        table.add_row(
            str(row.seq),
            masked,
            str(row.message_no),
            row.status,
            row.error or "",
            row.dlr_status or "",
        )
    out.print(table)
    if len(frame) > limit:
        out.print(f"… {len(frame) - limit:,} more (use --json or `deliveries errors`)")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _safe_cell(value: object) -> object:
    """Spreadsheet formula injection: a cell starting like a formula is quoted."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@deliveries_app.command("errors")
@command
def deliveries_errors(
    delivery_id: int,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV on stdout (safe to open in Excel).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The (number, message) pairs that failed, with the reason."""
    with context(as_json) as ctx:
        frame = dl.delivery_items(ctx, delivery_id, failed_only=True)
    frame = frame[["seq", "user_id", "phone", "message_no", "error"]]
    if as_csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(frame.columns)
        for row in frame.itertuples(index=False):
            writer.writerow([_safe_cell(v) if v is not None else "" for v in row])
        sys.stdout.write(buf.getvalue())
        return

    def human() -> None:
        table = Table("seq", "user", "phone", "message", "error")
        for row, masked in zip(frame.itertuples(), mask_phones(frame["phone"]), strict=True):
            table.add_row(
                str(row.seq), str(row.user_id or ""), masked, str(row.message_no), str(row.error)
            )
        out.print(table)
        out.print(f"{len(frame):,} failed")

    emit(
        as_json,
        {
            "delivery_id": delivery_id,
            "errors": frame.astype(object).where(frame.notna(), None).to_dict("records"),
        },
        human,
    )


@deliveries_app.command("cancel")
@command
def deliveries_cancel(delivery_id: int, as_json: JsonOpt = False) -> None:
    with context(as_json) as ctx:
        result = dl.cancel(ctx, delivery_id)
    emit(as_json, result, lambda: out.print(f"delivery {delivery_id} cancelled"))


@app.command("resend")
@command
def resend(
    delivery_id: int,
    individual: Annotated[
        bool, typer.Option("--individual", help="One individual send per failed number.")
    ] = False,
    phone: Annotated[str | None, typer.Option(help="With --individual: only this number.")] = None,
    at: At = None,
    as_json: JsonOpt = False,
) -> None:
    """Send the failed (number, message) pairs of a delivery again (R15)."""
    with context(as_json) as ctx:
        if individual:
            if at:
                raise SmsopsError("--at applies to a bulk resend; individual sends go now")
            results = []
            for created in dl.resend_individual(ctx, delivery_id, phone):
                sent = dispatching.dispatch(ctx, created.delivery_id)
                results.append(
                    {
                        **created.to_dict(),
                        "status": sent.status,
                        "sent": sent.sent,
                        "errors": sent.errors,
                        "tickets_used": sent.tickets_used,
                        "resend_of": delivery_id,
                    }
                )

            def human() -> None:
                for r in results:
                    print_result(r)

            emit(as_json, {"deliveries": results}, human)
            return
        if phone:
            raise SmsopsError("--phone applies to --individual")
        created = dl.resend_bulk(ctx, delivery_id, at=at)
        result = {**created.to_dict(), "resend_of": delivery_id}
        if at is None:
            sent = dispatching.dispatch(ctx, created.delivery_id)
            result.update(
                status=sent.status,
                sent=sent.sent,
                errors=sent.errors,
                tickets_used=sent.tickets_used,
            )
    emit(as_json, result, lambda: print_result(result))


@app.command("dispatch")
@command
def dispatch_one(
    delivery_id: int,
    join: Annotated[
        bool,
        typer.Option("--join", help="Help the dispatchers already sending it (parallel chunks)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send one delivery now (it must be due), or join the ones sending it."""
    with context(as_json) as ctx:
        result = dispatching.dispatch(ctx, delivery_id, join=join).to_dict()
    emit(
        as_json,
        result,
        lambda: out.print(
            f"delivery {delivery_id}: {result['status']}; sent {result['sent']:,}, "
            f"errors {result['errors']:,}"
        ),
    )


@app.command("dispatch-due")
@command
def dispatch_due(as_json: JsonOpt = False) -> None:
    """Send every scheduled delivery whose time has come; resume any whose process died."""
    with context(as_json) as ctx:
        results = [r.to_dict() for r in dispatching.dispatch_due(ctx)]

    def human() -> None:
        if not results:
            out.print("nothing due")
        for r in results:
            out.print(
                f"delivery {r['delivery_id']}: {r['status']}; sent {r['sent']:,}, "
                f"errors {r['errors']:,}" + (" (resumed)" if r["resumed"] else "")
            )

    emit(as_json, {"dispatched": results}, human)


@app.command("report")
@command
def report(
    delivery_id: Annotated[
        int | None, typer.Argument(help="Delivery id; default: the latest.")
    ] = None,
    html: Annotated[
        Path, typer.Option("--html", help="Write the report here (one self-contained file).")
    ] = ...,  # type: ignore[assignment]
    as_json: JsonOpt = False,
) -> None:
    """Run the delivery report notebook and export it as standalone HTML, for mail."""
    try:  # papermill, nbconvert and matplotlib: only here
        from smsops.reports import run_report
    except ImportError as exc:
        raise SmsopsError(f"smsops report needs the notebooks extra ({exc})") from None
    result = run_report(delivery_id, html)
    emit(
        as_json,
        result,
        lambda: out.print(f"delivery {result['delivery_id']}: report written to {result['html']}"),
    )


@app.command("serve")
@command
def serve(
    interval: Annotated[float, typer.Option(help="Seconds between dispatch-due runs.")] = 10.0,
) -> None:
    """Long-running Prefect scheduler: serves the smsops deployments, with dispatch-due on
    an interval. Uses PREFECT_API_URL if set, else starts a local Prefect server."""
    from flows.serve import serve as run
    from smsops.logs import install_masking

    install_masking()
    run(interval=interval)


# --- Kannel callbacks (issue 6) -------------------------------------------------------


@app.command("receiver")
@command
def receiver(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 13080,
    as_json: JsonOpt = False,
) -> None:
    """Receive Kannel's delivery reports (/dlr) and replies (/mo) until interrupted."""
    import logging

    from smsops import receiver as receiving
    from smsops.logs import install_masking

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    install_masking()  # its own lines are masked already; this covers everything else

    def ready(url: str) -> None:
        urls = {"url": url, "dlr_url": f"{url}/dlr", "mo_url": f"{url}/mo"}
        emit(as_json, urls, lambda: out.print(f"listening on {url} (/dlr, /mo); Ctrl-C stops"))
        sys.stdout.flush()

    with context(True) as ctx:
        receiving.serve(ctx, host, port, ready=ready)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
