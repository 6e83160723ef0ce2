"""What every command shares: the root group, consoles, error handling and output."""

from __future__ import annotations

import contextlib
import csv
import enum
import functools
import io
import json
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer._click.core import Context as ClickContext  # typer vendors click
from typer._click.exceptions import UsageError
from typer.core import TyperArgument, TyperGroup, TyperOption

from smsops import i18n, refusals
from smsops.cli import helptexts
from smsops.errors import InputError, Problem, SmsopsError
from smsops.logs import mask_text

# Every command, and every --help, imports this module: what only some commands need
# (pandas, phonenumbers, the settings and the store, rich's progress display) is imported
# where it is used, so a command that touches no frame starts fast (#12,
# tests/test_fast_start.py).
if TYPE_CHECKING:
    import pandas as pd
    from rich.progress import Progress

    from smsops.services.context import Context
    from smsops.services.context import Progress as ProgressCallback

_JSON = "smsops.json"  # ctx.meta: was --json given?


class SmsopsGroup(TyperGroup):
    """The root command. Its help reads like a CLI's (TEXT, DATETIME, ID, N; never a
    Python type), and a usage error under ``--json`` still prints one JSON document."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._english: list[tuple[str, helptexts.Recorded]] = []  # per command path
        for path, cmd in _commands(self, (self.name or "smsops",)):
            help_option = _cli_metavars(cmd)
            helptexts.fold_long_runs(cmd)
            recorded = helptexts.english(cmd, help_option, listed=cmd is not self)
            self._english.append((" ".join(path), recorded))

    def help_texts(self) -> Iterator[tuple[str, str]]:
        """(command path, English text) of every help text and panel title, as written."""
        for path, recorded in self._english:
            for _obj, _attr, text in recorded:
                yield path, text

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # the language is the one of this command line's environment (SMSOPS_LANG, the
        # locale), known only now: a test runner builds the group before it sets them
        for _path, recorded in self._english:
            helptexts.speak(recorded)
        return super().main(*args, **kwargs)

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        options = args[: args.index("--")] if "--" in args else args
        ctx.meta[_JSON] = "--json" in options
        return super().parse_args(ctx, args)

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:  # exit 2, its message on stderr as usual
            if ctx.meta.get(_JSON):
                doc = {"error": "usage", "message": exc.format_message()}
                print(json.dumps(doc, ensure_ascii=False))
            raise


class _Argument(TyperArgument):
    """A positional argument as help shows it: ``ID``, ``[ID]``, ``FILE...``."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the metavar says it


def _commands(group: TyperGroup, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``group`` and every command and group under it, each with its command path."""
    yield path, group
    for name, cmd in group.commands.items():
        if isinstance(cmd, TyperGroup):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def _value_metavar(annotation: object) -> str:
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return "|".join(str(m.value) for m in annotation)
        if issubclass(annotation, int):
            return "N"
        if issubclass(annotation, float):
            return "NUMBER"
        if issubclass(annotation, os.PathLike):
            return "PATH"
    return "TEXT"


def _argument_metavar(name: str, annotation: object) -> str:
    if name.endswith("_id"):
        return "ID"
    value = _value_metavar(annotation)
    return {"PATH": "FILE", "TEXT": name.upper()}.get(value, value)


def _cli_metavars(cmd: Any) -> Any:
    """Give every parameter of ``cmd`` that names none a CLI metavar: flags none,
    values one by type (N, TEXT, PATH, on|off), arguments their own (ID, FILE, N).
    Returns ``cmd``'s help option (click makes it once per command)."""
    names = cmd.context_settings.get("help_option_names", ["--help"])
    help_option = cmd.get_help_option(typer.Context(cmd, help_option_names=names))
    for param in [*cmd.params, help_option]:
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = _argument_metavar(param.name or "value", annotation)
            param.__class__ = _Argument
        elif isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else _value_metavar(annotation)
    return help_option


# No markup: user data (texts, ids, queries) is printed as it is, never read as rich
# markup ("[vip]" stays "[vip]"); styles are given with Text objects.
out = Console(
    highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """Turn every failure into one line on stderr and an exit code, never a traceback: a
    refusal (:class:`SmsopsError`) exits 1. With ``--json``, stdout carries one JSON
    document on every path, ``{"error": kind, "message": ...}``; usage errors (exit 2)
    get theirs from :class:`SmsopsGroup`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))

        def fail(document: dict[str, object], line: str, code: int = 1) -> typing.NoReturn:
            if as_json:
                print(json.dumps(document, ensure_ascii=False, default=str))
            err.print(f"smsops: {line}", markup=False)
            raise typer.Exit(code) from None

        try:
            return fn(*args, **kwargs)
        except SmsopsError as exc:
            # --json keeps the English line (programs read it); a person reads theirs (#15)
            fail(exc.to_dict(), refusals.human(exc))
        except KeyboardInterrupt:
            fail({"error": "interrupted", "message": "interrupted"}, i18n._("interrupted"), 130)
        except (typer.Exit, typer.Abort, SystemExit, UsageError):
            raise
        except OverflowError as exc:  # a number past what a date or the store can hold
            message = f"a value is out of range ({_first_line(exc)})"
            human = i18n._("a value is out of range ({detail})").format(detail=_first_line(exc))
            fail({"error": "range", "message": message}, human)
        except Exception as exc:  # a bug or an environment problem: still one clear line
            if os.environ.get("SMSOPS_DEBUG"):
                raise
            message = f"unexpected {type(exc).__name__}: {_first_line(exc)}"
            fail(
                {"error": "unexpected", "message": message},
                i18n._("{message} (set SMSOPS_DEBUG=1 for the traceback)").format(message=message),
            )

    return wrapper  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    """An outside error's message as one line, numbers masked (a database error quotes
    its SQL and parameters on the lines after the first)."""
    lines = str(exc).strip().splitlines()
    return mask_text(lines[0] if lines else type(exc).__name__)


# --- parameters every command reads the same way --------------------------------------

MAX_ID = 2**31 - 1  # the store's ids are integers, 32-bit on PostgreSQL


def parse_delivery_id(text: str) -> int:
    """A delivery id as typed: a whole number the store can hold, else a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a delivery id (a number: see `smsops deliveries list`)"
        ) from None
    if not 1 <= value <= MAX_ID:
        raise typer.BadParameter(f"{text} is not a delivery id (ids run from 1 to {MAX_ID:,})")
    return value


def parse_send_time(text: str) -> str:
    """``--at`` as typed. An empty one — an unset shell variable — is a usage error, never
    "now" (R12); the service reads the time itself (:func:`smsops.clock.parse_at`)."""
    if not text.strip():
        raise typer.BadParameter(
            "the send time is empty (an unset variable?): give one such as "
            "'2026-12-01 10:00', or leave --at out to send now"
        )
    return text


DeliveryId = Annotated[
    int,
    typer.Argument(
        metavar="ID", parser=parse_delivery_id, help="Delivery id (see `deliveries list`)."
    ),
]


@contextmanager
def context(as_json: bool) -> Iterator[Context]:
    """The Context for one command, with a progress bar on a terminal."""
    from smsops.services.context import Context
    from smsops.settings import Settings

    with _progress_bar(not as_json and err.is_terminal) as progress:
        ctx = Context.open(Settings(), progress=progress)
        _account_language(ctx)
        try:
            yield ctx
        finally:
            ctx.close()


def _account_language(ctx: Context) -> None:
    """The account's default language (#15), read only when neither ``SMSOPS_LANG`` nor
    the locale chooses one; a store that cannot be read is the command's to report."""
    i18n.set_account_default(None)
    if not i18n.chosen_by_environment():
        from smsops.services.account import get_account

        with contextlib.suppress(SmsopsError):
            i18n.set_account_default(get_account(ctx).language)


@contextmanager
def _progress_bar(show: bool) -> Iterator[ProgressCallback]:
    """A progress callback that draws bars on stderr, or (no terminal) does nothing."""
    from smsops.services.context import no_progress

    if not show:
        yield no_progress
        return
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        _live.append(bar)
        tasks: dict[str, TaskID] = {}

        def progress(done: int, total: int, what: str) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        try:
            yield progress
        finally:
            _live.remove(bar)


_live: list[Progress] = []  # the progress displays of the commands running


@contextmanager
def no_live_display() -> Iterator[None]:
    """Stop the progress display while the body talks to the user, then resume it. A live
    display hides the cursor and redraws its lines ten times a second, erasing whatever
    is written under it — a question would be invisible (R13)."""
    stopped = [bar for bar in _live if bar.live.is_started]
    for bar in stopped:
        bar.stop()
    try:
        yield
    finally:
        for bar in stopped:
            bar.start()


def confirm(question: str) -> bool:
    """Ask a yes/no question on the terminal, with no live display drawing over it."""
    with no_live_display():
        return typer.confirm(question)


def emit(as_json: bool, data: object, human: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(data, ensure_ascii=False, default=str))
    else:
        human()


def kv_table(rows: Mapping[str, object], title: str | None = None) -> Table:
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
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    # pd.NA and NaT exist only once pandas is loaded; a command that loaded none has none
    pd = sys.modules.get("pandas")
    if pd is not None and pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    return str(value)


# A Japanese number of 11 digits in E.164 (mobile, IP phone, M2M): 0X0-XXXX-XXXX.
_JP_0X0 = r"^\+81([2-9]0)(\d{4})(\d{4})$"


def _written_phone(e164: str) -> str:
    """One number as people write it: Japanese ones nationally (03-1234-5678), others in
    the international form (+1 650-253-0000, which the formula guard then quotes)."""
    import phonenumbers

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
                cannot = [Problem(None, None, f"cannot write: {exc.strerror}")]
                raise InputError(f"{option} {path}", cannot) from None
        while temps:
            temp, target, option = temps[0]
            try:
                os.replace(temp, target)
            except OSError as exc:
                cannot = [Problem(None, None, f"cannot write: {exc.strerror}")]
                raise InputError(f"{option} {target}", cannot) from None
            temps.pop(0)
    finally:
        for temp, _, _ in temps:
            with contextlib.suppress(OSError):
                temp.unlink()
