"""What every command shares: the apps, consoles, error handling and output."""

from __future__ import annotations

import csv
import enum
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TextIO, TypeVar

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from smsops.errors import SmsopsError
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

# No markup: user data (texts, ids, queries) is printed as it is, never read as rich
# markup ("[vip]" stays "[vip]"); styles are given with Text objects.
out = Console(
    highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160
)
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
        table.add_row(Text(key, style="bold"), str(value))
    return table


class OnOff(enum.Enum):
    on = "on"
    off = "off"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A signed number (an E.164 phone, a count) cannot run anything: it stays as it is.
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def _safe_cell(value: object) -> object:
    """Spreadsheet formula injection (OWASP): a text cell that starts like a formula is
    quoted with ``'``, unless it is a plain signed number such as ``+819012345678``."""
    if (
        isinstance(value, str)
        and value.startswith(_FORMULA_START)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def cell(value: object) -> str:
    """A value as table text: missing (None, NaN, NA) is blank."""
    return "" if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)) else str(value)


def write_safe_csv(frame: pd.DataFrame, stream: TextIO) -> None:
    """A frame as CSV that is safe to open in Excel (no cell is read as a formula)."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(frame.columns)
    for row in frame.astype(object).where(frame.notna(), None).itertuples(index=False):
        writer.writerow(["" if v is None else _safe_cell(v) for v in row])


def main() -> None:
    app()
