"""What every command shares: the apps, consoles, error handling and output."""

from __future__ import annotations

import contextlib
import csv
import enum
import functools
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TextIO, TypeVar

import pandas as pd
import phonenumbers
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from smsops.errors import InputError, Problem, SmsopsError
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


# A Japanese number of 11 digits in E.164 (mobile, IP phone, M2M): 0X0-XXXX-XXXX.
_JP_0X0 = r"^\+81([2-9]0)(\d{4})(\d{4})$"


def _written_phone(e164: str) -> str:
    """One number as people write it: Japanese ones nationally (03-1234-5678), others in
    the international form (+1 650-253-0000, which the formula guard then quotes)."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    national = phonenumbers.region_code_for_number(number) == "JP"
    return phonenumbers.format_number(
        number,
        phonenumbers.PhoneNumberFormat.NATIONAL
        if national
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    )


def excel_phones(phones: pd.Series) -> pd.Series:
    """E.164 numbers in the form Japanese tools export and Excel keeps as text:
    ``+819012345678`` → ``090-1234-5678``.

    Written as E.164, Excel shows 8.19012E+11 and saves it back so (the damage smsops
    refuses on import); without hyphens it drops the leading 0. The hyphenated form stays
    text in Excel, is a string to ``pandas.read_csv``, imports back into smsops (R3) and
    starts like no formula."""
    s = phones.astype("string[pyarrow]")
    out = s.str.replace(_JP_0X0, r"0\1-\2-\3", regex=True)
    rest = (s.str.startswith("+") & ~s.str.match(_JP_0X0)).fillna(False).to_numpy(dtype=bool)
    if rest.any():  # landlines, toll-free and foreign numbers: rare, and by the book
        out[rest] = s[rest].map({v: _written_phone(v) for v in s[rest].unique()})
    return out


def write_safe_csv(frame: pd.DataFrame, stream: TextIO, phones: Sequence[str] = ()) -> None:
    """A frame as CSV that is safe to open in Excel: no cell is read as a formula, and the
    ``phones`` columns (E.164) are written as Excel keeps them (:func:`excel_phones`)."""
    if phones:
        frame = frame.assign(**{c: excel_phones(frame[c]) for c in phones})
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(frame.columns)
    for row in frame.astype(object).where(frame.notna(), None).itertuples(index=False):
        writer.writerow(["" if v is None else _safe_cell(v) for v in row])


def write_csv_stdout(frame: pd.DataFrame, phones: Sequence[str] = ()) -> None:
    """:func:`write_safe_csv` to stdout as UTF-8 with a BOM, whatever the locale: Excel
    reads a CSV without BOM as CP932 on Japanese Windows and garbles UTF-8 text."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stdout (a notebook's): its encoding is not ours
        sys.stdout.write("\ufeff")
        write_safe_csv(frame, sys.stdout, phones)
        return
    stream = io.TextIOWrapper(buffer, encoding="utf-8-sig", newline="", write_through=True)
    try:
        write_safe_csv(frame, stream, phones)
        stream.flush()
    finally:
        stream.detach()  # sys.stdout keeps its buffer


def check_csv_path(path: Path, option: str) -> None:
    """Refuse, before any work, a CSV output path that cannot be written: a folder, or a
    file in a folder that does not exist."""
    where = f"{option} {path}"
    if path.is_dir():
        raise InputError(where, [Problem(None, None, "is a folder; give a file name")])
    parent = path.absolute().parent
    if not parent.exists():
        raise InputError(where, [Problem(None, None, f"folder {parent} does not exist")])
    if not parent.is_dir():
        raise InputError(where, [Problem(None, None, f"{parent} is not a folder")])


def write_csv_files(files: Sequence[tuple[str, Path, pd.DataFrame, Sequence[str]]]) -> None:
    """Write each (option, path, frame, phone columns) as a safe CSV with a BOM
    (:func:`write_safe_csv`), all or none: each goes to a temporary file beside its
    target, and the targets are replaced only once every one is written. A device or a
    pipe (``/dev/stdout``) is written to directly."""
    for option, path, _, _ in files:
        check_csv_path(path, option)
    paths = [Path(os.path.realpath(path)) for _, path, _, _ in files]
    if len(set(paths)) < len(paths):
        raise InputError(
            " and ".join(option for option, *_ in files),
            [Problem(None, None, "name the same file; give each its own")],
        )
    temps: list[tuple[Path, Path, str]] = []  # (temporary file, target, option)
    try:
        for (option, path, frame, phones), target in zip(files, paths, strict=True):
            direct = target.exists() and not target.is_file()
            temp = target if direct else target.with_name(f".{target.name}.{os.getpid()}.tmp")
            if not direct:
                temps.append((temp, target, option))
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | (0 if direct else os.O_EXCL), 0o666)
                with open(fd, "w", encoding="utf-8-sig", newline="") as fh:
                    write_safe_csv(frame, fh, phones)
            except OSError as exc:
                raise SmsopsError(f"{option} {path}: cannot write: {exc.strerror}") from None
        while temps:
            temp, target, option = temps[0]
            try:
                os.replace(temp, target)
            except OSError as exc:
                raise SmsopsError(f"{option} {target}: cannot write: {exc.strerror}") from None
            temps.pop(0)
    finally:
        for temp, _, _ in temps:
            with contextlib.suppress(OSError):
                temp.unlink()


def main() -> None:
    app()
