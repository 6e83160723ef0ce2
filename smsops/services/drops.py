"""A drop folder (#11): user tables that land in it are imported one file at a time, each
whole or not at all, then moved aside.

Layout of the folder (a local path or any fsspec URL: ``s3://…``, ``memory://…``)::

    DIR/                 user tables (``users import``), taken in name order
    DIR/processed/       imported, or the same content as a file imported before
    DIR/rejected/        refused, each beside ``<name>.errors.csv`` (file, row, line,
                         column, problem; phone numbers masked)
    DIR/optouts/         opt-out lists (R16), with their own processed/ and rejected/

A file is left where it is while it may still be being written: a ``.part`` or ``.tmp``
name, or a size and time that changed within ``settle`` seconds and since the previous
look. A file is moved only after its import committed, and the import records the hash
of its bytes in the same transaction: a crash before the commit leaves the file to be
imported again whole; a crash between the commit and the move makes the retry a skip.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, select

from smsops import clock
from smsops.errors import InputError, Problem
from smsops.logs import mask_text
from smsops.services import people
from smsops.services.context import Context
from smsops.store import read
from smsops.store.schema import drop_imports

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

Mode = Literal["upsert", "replace"]
MODES: tuple[Mode, ...] = ("upsert", "replace")
Inbox = Literal["users", "optouts"]
PROCESSED, REJECTED, OPTOUTS = "processed", "rejected", "optouts"
WRITING_SUFFIXES = (".part", ".tmp")  # what uploaders name a file until it is whole
SETTLE_SECONDS = 10.0
ERRORS_COLUMNS = ("file", "row", "line", "column", "problem")
# where the table readers say a problem is: "… (line 7)"
_LINE = re.compile(r" \((?:in [^()]*, )?line (\d+)\)$")

# (size, modification time as a POSIX timestamp or None) of each file at the last look
Looks = dict[str, tuple[int, float | None]]


class Outcome(StrEnum):
    """What a pass did with one file."""

    imported = "imported"
    rejected = "rejected"
    duplicate = "skipped_duplicate"  # its content was imported before: moved to processed/
    writing = "still_being_written"  # left in the inbox for a later pass


@dataclass(frozen=True)
class DropFile:
    """One file of a pass: where it was, what happened, and why."""

    inbox: Inbox
    name: str
    outcome: Outcome
    detail: str  # one line, phone numbers masked
    rows: int | None = None
    moved_to: str | None = None  # relative to the drop folder
    errors_csv: str | None = None  # relative to the drop folder
    # the rejected rows as in the errors CSV: file, row, line, column, problem (masked)
    problems: list[dict[str, object]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inbox": self.inbox,
            "name": self.name,
            "outcome": self.outcome.value,
            "rows": self.rows,
            "detail": self.detail,
            "moved_to": self.moved_to,
            "errors_csv": self.errors_csv,
        }


@dataclass
class DropPass:
    """One look at a drop folder and what became of each file in it."""

    folder: str
    mode: Mode
    files: list[DropFile] = field(default_factory=list)
    looks: Looks = field(default_factory=dict, repr=False)  # hand to the next pass

    def counts(self) -> dict[str, int]:
        return {o.value: sum(f.outcome is o for f in self.files) for o in Outcome}

    def summary(self) -> str:
        """``2 imported, 1 rejected, 1 skipped (duplicate), 1 still being written``."""
        c = self.counts()
        line = (
            f"{c['imported']} imported, {c['rejected']} rejected, "
            f"{c['skipped_duplicate']} skipped (duplicate), "
            f"{c['still_being_written']} still being written"
        )
        if c["rejected"]:
            line += f": see {REJECTED}/*.errors.csv"
        return line

    def human_summary(self) -> str:
        """:meth:`summary` in the reader's language (#15), numbers as the reader writes
        them."""
        from smsops.i18n import _, number

        c = self.counts()
        line = _(
            "{imported} imported, {rejected} rejected, {duplicate} skipped (duplicate), "
            "{writing} still being written"
        ).format(
            imported=number(c["imported"]),
            rejected=number(c["rejected"]),
            duplicate=number(c["skipped_duplicate"]),
            writing=number(c["still_being_written"]),
        )
        if c["rejected"]:
            line += _(": see {files}").format(files=f"{REJECTED}/*.errors.csv")
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": mask_text(self.folder),
            "mode": self.mode,
            "files": [f.to_dict() for f in self.files],
            "counts": self.counts(),
        }


def watch(
    ctx: Context,
    folder: str,
    *,
    mode: Mode = "upsert",
    encoding: str = "auto",
    settle: float = SETTLE_SECONDS,
    now: datetime | None = None,
    previous: Looks | None = None,
    create: bool = False,
    on_file: Callable[[DropFile], None] | None = None,
) -> DropPass:
    """One pass over the drop folder ``folder``: every file that is whole, in name order,
    imported (user tables with ``mode``; opt-out lists under ``optouts/``) and moved.

    ``now`` (default: the clock) and ``previous`` (the ``looks`` of the last pass) decide
    which files are still being written. A bad folder is one :class:`InputError`; a bad
    file is rejected and the pass goes on."""
    if mode not in MODES:
        raise InputError("--mode", [Problem(None, None, f"{mode!r} is not upsert or replace")])
    fs, root = _open_folder(folder, create)
    at = (now or clock.now()).timestamp()
    result = DropPass(folder, mode)
    inboxes: list[tuple[Inbox, str]] = [("users", root), ("optouts", _join(root, OPTOUTS))]
    for inbox, path in inboxes:
        if inbox == "optouts" and not fs.isdir(path):
            if not create:
                continue
            fs.makedirs(path, exist_ok=True)
        for entry in _files(fs, path):
            done = _take(
                ctx,
                fs,
                root,
                inbox=inbox,
                entry=entry,
                mode=mode,
                encoding=encoding,
                settle=settle,
                at=at,
                previous=previous,
                result=result,
            )
            result.files.append(done)
            if on_file is not None:
                on_file(done)
    return result


# --- the folder ----------------------------------------------------------------------


def _open_folder(folder: str, create: bool) -> tuple[AbstractFileSystem, str]:
    """The filesystem and path of ``folder``, or one InputError saying why it cannot be
    used (unknown scheme, missing extra, no such folder)."""
    import fsspec

    def bad(why: str) -> InputError:
        return InputError(f"drop folder {folder}", [Problem(None, None, why)])

    if not folder.strip():
        raise bad("no folder given")
    try:
        fs, root = fsspec.core.url_to_fs(folder)
    except ImportError as exc:  # s3://… without s3fs: fsspec says which package to install
        raise bad(f"{exc} (pip install 'smsops[s3]' or the package for its scheme)") from None
    except ValueError as exc:
        raise bad(str(exc)) from None
    root = str(root).rstrip("/") or "/"
    try:
        if not fs.isdir(root):
            if create:
                fs.makedirs(root, exist_ok=True)
            elif fs.exists(root):
                raise bad("is a file, not a folder")
            else:
                raise bad("no such folder")
    except OSError as exc:
        raise bad(f"cannot be read: {exc.strerror or exc}") from None
    return fs, root


def _join(*parts: str) -> str:
    return str(PurePosixPath(*parts))


def _files(fs: AbstractFileSystem, path: str) -> list[dict[str, Any]]:
    """The files directly in ``path``, by name; hidden ones (``.name``) are not drops."""
    entries = [e for e in fs.ls(path, detail=True) if e.get("type") == "file"]
    entries = [e for e in entries if not PurePosixPath(e["name"]).name.startswith(".")]
    return sorted(entries, key=lambda e: PurePosixPath(e["name"]).name)


def _mtime(fs: AbstractFileSystem, entry: dict[str, Any]) -> float | None:
    """When the file last changed (POSIX time), or None when the filesystem cannot say."""
    if isinstance(entry.get("mtime"), int | float):
        return float(entry["mtime"])
    try:
        when = fs.modified(entry["name"])
    except (NotImplementedError, OSError, KeyError, ValueError):
        return None
    return when.timestamp() if isinstance(when, datetime) else None


# --- one file ------------------------------------------------------------------------


def _take(
    ctx: Context,
    fs: AbstractFileSystem,
    root: str,
    *,
    inbox: Inbox,
    entry: dict[str, Any],
    mode: Mode,
    encoding: str,
    settle: float,
    at: float,
    previous: Looks | None,
    result: DropPass,
) -> DropFile:
    path = entry["name"]
    name = PurePosixPath(path).name
    here = str(PurePosixPath(path).parent)
    look = (int(entry.get("size") or 0), _mtime(fs, entry))
    result.looks[path] = look
    if name.lower().endswith(WRITING_SUFFIXES):
        return DropFile(
            inbox, name, Outcome.writing, f"still being written ({name} is not whole yet)"
        )
    changed = look[1] is None or at - look[1] < settle
    if changed and (previous or {}).get(path) != look:
        why = "changed since the last look" if path in (previous or {}) else "changed just now"
        return DropFile(inbox, name, Outcome.writing, f"still being written ({why})")
    with _local_copy(fs, path) as local:
        digest = _sha256(local)
        again = fs.info(path)
        if (int(again.get("size") or 0), _mtime(fs, again)) != look:  # grew while read
            result.looks[path] = (int(again.get("size") or 0), _mtime(fs, again))
            return DropFile(
                inbox, name, Outcome.writing, "still being written (changed while read)"
            )
        seen = _imported_before(ctx, digest)
        if seen is not None:
            moved = _move(fs, root, path, _join(here, PROCESSED))
            return DropFile(
                inbox,
                name,
                Outcome.duplicate,
                f"skipped: the same content as {seen} was imported before",
                moved_to=moved,
            )
        record = _recorder(digest, inbox, name)
        try:
            if inbox == "users":
                imported = people.import_users(
                    ctx, [local], encoding, replace=mode == "replace", also=record
                )
                rows = imported.rows
                detail = f"{rows:,} row{'s' * (rows != 1)} imported"
                if imported.deactivated:
                    detail += (
                        f"; {imported.deactivated:,} users not in this full export are now inactive"
                    )
            else:
                added = people.optout_import(ctx, local, encoding, also=record)
                rows = added.rows
                numbers = f"{rows:,} number{'s' * (rows != 1)} read"
                detail = f"{numbers}, {added.added:,} added to the opt-out list"
        except InputError as exc:
            return _reject(fs, root, path, inbox=inbox, name=name, exc=exc)
    moved = _move(fs, root, path, _join(here, PROCESSED))
    return DropFile(inbox, name, Outcome.imported, detail, rows=rows, moved_to=moved)


@contextmanager
def _local_copy(fs: AbstractFileSystem, path: str) -> Iterator[str]:
    """A local file with the bytes of ``path``: the file itself on a local filesystem,
    else a copy in a temporary folder (under its own name, which error messages show)."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="smsops-drop-")
    try:
        local = os.path.join(folder, PurePosixPath(path).name)
        fs.get_file(path, local)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sha256(local: str) -> str:
    digest = hashlib.sha256()
    with open(local, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _imported_before(ctx: Context, digest: str) -> str | None:
    """``NAME (imported 2026-12-01T02:00:00+00:00)`` when this content was imported."""
    with read(ctx.engine) as conn:
        row = conn.execute(
            select(drop_imports.c.name, drop_imports.c.imported_at).where(
                drop_imports.c.sha256 == digest
            )
        ).one_or_none()
    if row is None:
        return None
    when = row.imported_at
    shown = when.isoformat(timespec="seconds") if isinstance(when, datetime) else str(when)
    return f"{row.name} ({shown})"


def _recorder(digest: str, inbox: Inbox, name: str) -> Callable[[Connection, int], None]:
    """Record the file as imported, inside the import's own transaction."""

    def record(conn: Connection, rows: int) -> None:
        conn.execute(
            drop_imports.insert().values(
                sha256=digest, kind=inbox, name=name, row_count=rows, imported_at=clock.now()
            )
        )

    return record


def _move(fs: AbstractFileSystem, root: str, path: str, to: str) -> str:
    """Move ``path`` into the folder ``to`` under a name no file there has (``a.csv``,
    then ``a.1.csv``…); return where it went, relative to the drop folder."""
    fs.makedirs(to, exist_ok=True)
    target = _free_name(fs, to, PurePosixPath(path).name)
    fs.mv(path, target)
    return str(PurePosixPath(target).relative_to(root))


def _free_name(fs: AbstractFileSystem, folder: str, name: str) -> str:
    stem, suffix = os.path.splitext(name)
    target, n = _join(folder, name), 0
    while fs.exists(target):
        n += 1
        target = _join(folder, f"{stem}.{n}{suffix}")
    return target


# --- rejected files ------------------------------------------------------------------


def error_rows(name: str, problems: list[Problem]) -> list[dict[str, object]]:
    """The rows of an errors CSV: file, row, line, column, problem (numbers masked).

    >>> error_rows("a.csv", [Problem(7, "phone", "'090' is not a number (line 8)")])
    [{'file': 'a.csv', 'row': 7, 'line': 8, 'column': 'phone', 'problem': "'090' is not a number"}]
    """
    rows: list[dict[str, object]] = []
    for p in problems:
        found = _LINE.search(p.problem)
        rows.append(
            {
                "file": name,
                "row": p.row,
                "line": int(found.group(1)) if found else None,
                "column": p.column,
                "problem": mask_text(p.problem[: found.start()] if found else p.problem),
            }
        )
    return rows


def errors_csv(rows: list[dict[str, object]]) -> bytes:
    """An errors table as CSV, UTF-8 with a BOM (Excel on Japanese Windows reads it so);
    a cell that starts like a formula is quoted with ``'`` (OWASP CSV injection)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ERRORS_COLUMNS)
    for row in rows:
        writer.writerow([_safe(row[c]) for c in ERRORS_COLUMNS])
    return buffer.getvalue().encode("utf-8-sig")


def _safe(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


def _reject(
    fs: AbstractFileSystem, root: str, path: str, *, inbox: Inbox, name: str, exc: InputError
) -> DropFile:
    """Move a refused file to ``rejected/`` beside its errors CSV (written first: a crash
    between the two leaves the file in the inbox, rejected again on the next pass)."""
    folder = _join(str(PurePosixPath(path).parent), REJECTED)
    fs.makedirs(folder, exist_ok=True)
    target = _free_name(fs, folder, name)
    rows = error_rows(name, exc.problems)
    errors = f"{target}.errors.csv"
    with fs.open(errors, "wb") as f:
        f.write(errors_csv(rows))
    fs.mv(path, target)
    rel = str(PurePosixPath(target).relative_to(root))
    count = f"{len(rows)} problem{'s' * (len(rows) != 1)}"
    first = f"{rows[0]['column'] or 'table'}: {rows[0]['problem']}" if rows else ""
    row = rows[0]["row"] if rows else None
    where = f"row {row}, " if row is not None else ""
    return DropFile(
        inbox,
        name,
        Outcome.rejected,
        f"rejected, nothing imported: {count} ({where}{first}{'; …' * (len(rows) > 1)})",
        moved_to=rel,
        errors_csv=f"{rel}.errors.csv",
        problems=rows,
    )
