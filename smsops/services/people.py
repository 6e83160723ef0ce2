"""Users and the opt-out list (R2, R16): imports are all-or-nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, func, select

from smsops import clock, i18n
from smsops.domain.phones import classify_phones, mask_phone
from smsops.errors import InputError, NotFoundError, Problem, Unstreamable
from smsops.services.context import Context
from smsops.store import read, write
from smsops.store.bulk import copy_rows, driver_time, execute_many, execute_one, fetch_strings
from smsops.store.schema import optouts, users
from smsops.tables import read_phone_list, read_users_csvs, stream_users_csvs


@dataclass(frozen=True)
class ImportResult:
    """What an import did: rows read, users stored, and which column held the phones."""

    rows: int
    users_total: int
    # the header read as the phone number (R3), e.g. "携帯電話番号"; files that name it
    # differently give their names in file order, "a, b"
    phone_column: str = "phone"
    # a full export (``replace``): stored users it no longer holds, now inactive (#11)
    deactivated: int | None = None

    def to_dict(self) -> dict[str, Any]:
        done = {
            "rows": self.rows,
            "users_total": self.users_total,
            "phone_column": self.phone_column,
        }
        return done if self.deactivated is None else {**done, "deactivated": self.deactivated}


# Called inside an import's transaction with the rows read, just before it commits:
# what it writes commits with the import or not at all (a drop folder's record, #11).
InTransaction = Callable[[Connection, int], None]


def import_users(
    ctx: Context,
    paths: Sequence[str | Path],
    encoding: str = "auto",
    *,
    replace: bool = False,
    also: InTransaction | None = None,
) -> ImportResult:
    """Read every file (all problems reported at once), then upsert all rows by user_id in
    one transaction: a bad file changes nothing. ``replace``: the files are a full export,
    and stored users they do not hold become inactive (kept, never selected; #11).

    Files stream (#12): each batch is checked and written in the one transaction, and
    only the user ids stay in memory. At the first problem (or a shape only the whole
    table shows) the transaction rolls back and the files are read whole, which names
    every problem by file, row, line and column."""
    try:
        stream = stream_users_csvs(list(paths), encoding=encoding)
        return _upsert(ctx, stream.batches(), stream.phone_columns, stream.estimate, replace, also)
    except Unstreamable:
        stream = None  # its files' text goes before they are read again
    frame = read_users_csvs(list(paths), encoding=encoding)
    return upsert_users(ctx, frame, replace=replace, also=also)


def upsert_users(
    ctx: Context,
    frame: pd.DataFrame,
    *,
    replace: bool = False,
    also: InTransaction | None = None,
) -> ImportResult:
    """Insert new users at the end of the registration order; update known ones in place
    (and make them active again). ``replace``: every other user becomes inactive.

    One transaction, written ``settings.write_batch`` rows at a time: only one batch is
    ever held as Python values (#12). The frame has been checked whole before (the table
    readers refuse a file with any bad row), so a batch never fails half-way on a row."""
    step = max(ctx.settings.write_batch, 1)
    parts = (frame.iloc[start : start + step] for start in range(0, len(frame), step))
    columns = frame.attrs.get("phone_columns") or ["phone"]
    return _upsert(ctx, parts, columns, len(frame), replace, also)


def _upsert(
    ctx: Context,
    frames: Iterable[pd.DataFrame],
    phone_columns: Sequence[str],
    total: int,
    replace: bool,
    also: InTransaction | None,
) -> ImportResult:
    """:func:`upsert_users` of the users in ``frames`` (checked batches, in order; one of
    them may raise, which rolls every write back), ``total`` their number as far as known
    (for the progress display)."""
    deactivated = None
    rows = 0
    with write(ctx.engine) as conn:
        now = driver_time(conn, clock.now())
        batches = _user_rows(frames, numbered=conn.dialect.name == "postgresql")
        if conn.dialect.name == "postgresql":
            rows = _upsert_by_copy(ctx, conn, batches, total, now)
        else:
            for rows, part in batches:
                execute_many(conn, _UPSERT + _VALUES, [(*row, now) for row in part])
                ctx.progress(rows, max(total, rows), "importing users")
        if replace:  # every user of the file was written just now, stamped ``now``
            deactivated = execute_one(
                conn,
                "UPDATE users SET active = FALSE, updated_at = ? WHERE active AND updated_at <> ?",
                (now, now),
            )
        if also is not None:
            also(conn, rows)
        total = conn.execute(select(func.count()).select_from(users)).scalar_one()
    return ImportResult(rows, int(total), ", ".join(phone_columns), deactivated)


def _user_rows(
    frames: Iterable[pd.DataFrame], *, numbered: bool = False
) -> Iterator[tuple[int, list[tuple]]]:
    """(rows done, [([n,] user_id, phone, attrs JSON or None), ...]) per frame of
    ``frames``, in order (``n`` the row's place among all rows): the other columns as one
    JSON object per user."""
    start = 0
    for part in frames:
        extra = [c for c in part.columns if c not in ("user_id", "phone")]
        columns: list[Iterable[Any]] = [
            part["user_id"].tolist(),
            _nullable(part["phone"]),
            _attrs_json(part, extra),
        ]
        if numbered:
            columns.insert(0, range(start, start + len(part)))
        start += len(part)
        yield start, list(zip(*columns, strict=True))


def _nullable(column: pd.Series) -> list[Any]:
    """A column's values, None where missing (Arrow text gives pd.NA, which no driver takes)."""
    if column.dtype == "string[pyarrow]":
        import pyarrow as pa

        return pa.array(column.array).to_pylist()
    return column.astype(object).where(column.notna(), None).tolist()


def _attrs_json(part: pd.DataFrame, extra: list[str]) -> list[str | None]:
    """The ``extra`` columns of each row as one JSON object (``{"name":"山田","tags":null}``),
    or None per row when there are none. Text columns (what the table readers give) are
    quoted by Arrow, column at a time; any other frame goes through ``DataFrame.to_json``."""
    if not extra:
        return [None] * len(part)
    if not all(part[c].dtype == "string[pyarrow]" for c in extra):
        return part[extra].to_json(orient="records", lines=True, force_ascii=False).splitlines()
    import pyarrow as pa
    import pyarrow.compute as pc

    pieces = []
    for name in extra:
        values = pa.array(part[name].array).cast(pa.string())  # an Array, or a ChunkedArray
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        text = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
        control = pc.fill_null(pc.match_substring_regex(values, r"[\x00-\x1f]"), False)
        if pc.any(control).as_py():  # a line break, a tab…: escaped as json does (rare)
            odd = control.to_numpy(zero_copy_only=False)
            fixed = text.to_numpy(zero_copy_only=False).astype(object)
            fixed[odd] = [
                json.dumps(v, ensure_ascii=False)[1:-1] for v in values.filter(control).to_pylist()
            ]
            text = pa.array(fixed, type=pa.string())
        key = json.dumps(name, ensure_ascii=False)
        pieces.append(
            pc.fill_null(pc.binary_join_element_wise(f'{key}:"', text, '"', ""), f"{key}:null")
        )
    objects = pc.binary_join_element_wise("{", pc.binary_join_element_wise(*pieces, ","), "}", "")
    return objects.to_pylist()


def _upsert_by_copy(
    ctx: Context,
    conn: Connection,
    batches: Iterator[tuple[int, list[tuple]]],
    total: int,
    now: object,
) -> int:
    """PostgreSQL: COPY the rows into a temporary table, then upsert them in one statement
    (in file order, so new users are numbered in registration order). Twice as fast as
    executemany. The user ids are unique: the table readers refuse repeats."""
    conn.exec_driver_sql(
        "CREATE TEMPORARY TABLE users_in (n bigint, user_id text, phone text, attrs text) "
        "ON COMMIT DROP"
    )
    done = 0
    for done, part in batches:
        copy_rows(conn, "users_in", ["n", "user_id", "phone", "attrs"], rows=part)
        ctx.progress(done, max(total, done), "importing users")
    # the ORDER BY sorts every row (its attributes too): in memory rather than in files
    # beside the server's default 4 MB (a quarter off a 1M-user import, #12)
    conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    conn.exec_driver_sql(
        f"{_UPSERT} SELECT user_id, phone, attrs, %s FROM users_in ORDER BY n {_ON_CONFLICT}",
        (now,),
    )
    return done


# Plain SQL that SQLite and PostgreSQL both speak; executemany of tuples is several times
# faster than a Core statement with a dict per row.
_UPSERT = "INSERT INTO users (user_id, phone, attrs, updated_at)"
_ON_CONFLICT = (
    "ON CONFLICT (user_id) DO UPDATE SET phone = excluded.phone, attrs = excluded.attrs, "
    "updated_at = excluded.updated_at, active = TRUE"
)
_VALUES = f" VALUES (?, ?, ?, ?) {_ON_CONFLICT}"


def load_users(ctx: Context, *, with_attrs: bool = False) -> pd.DataFrame:
    """The active users in registration order (user_id, phone[, the other columns]): one
    a full export no longer holds is never selected (#11)."""
    cols = ["user_id", "phone"] + (["attrs"] if with_attrs else [])
    with read(ctx.engine) as conn:  # batch by batch: 1M users as Python rows cost ~1 GB (#12)
        frame = fetch_strings(
            conn,
            f"SELECT {', '.join(cols)} FROM users WHERE active ORDER BY pos",
            cols,
            batch=ctx.settings.write_batch,
        )
    if with_attrs:
        attrs = frame.pop("attrs")
        if attrs.notna().any():
            import io

            expanded = pd.read_json(
                io.StringIO("\n".join(attrs.fillna("{}"))), lines=True, dtype=False
            )
            expanded = expanded.drop(columns=["user_id", "phone"], errors="ignore")
            frame = pd.concat([frame, expanded.astype("string[pyarrow]")], axis=1)
    return frame


def iter_users(conn: Connection, batch: int) -> Iterator[pd.DataFrame]:
    """:func:`load_users` without attributes (``user_id``, ``phone``) in frames of at most
    ``batch`` rows, read through one cursor in ``conn``'s transaction: a selection of
    millions of users holds one batch at a time (#12). Always yields at least one frame
    (empty when there are no active users)."""
    from smsops.store.bulk import iter_strings

    cols = ["user_id", "phone"]
    sql = f"SELECT {', '.join(cols)} FROM users WHERE active ORDER BY pos"
    empty = True
    for frame in iter_strings(conn, sql, cols, batch=batch):
        empty = False
        yield frame
    if empty:
        yield pd.DataFrame({c: pd.array([], dtype="string[pyarrow]") for c in cols})


def users_count(ctx: Context) -> int:
    with read(ctx.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(users)).scalar_one())


def inactive_count(ctx: Context) -> int:
    """Users a full export no longer holds (#11): kept for history, never selected."""
    with read(ctx.engine) as conn:
        stmt = select(func.count()).select_from(users).where(~users.c.active)
        return int(conn.execute(stmt).scalar_one())


# --- opt-outs (R16) -----------------------------------------------------------------


# Why an opt-out entry is refused, by its R3 reason. The list holds only numbers smsops
# could send to: an entry that is not one would be stored and then match nobody (R16).
_REFUSED = {
    "no_phone": "no phone number",
    "malformed": "not a phone number",
    "not_mobile": "not a Japanese mobile number, so smsops never sends to it",
}


def _e164(values: pd.Series, source: str, *, table: bool = False) -> list[str]:
    """E.164 of each value, read exactly as R3 reads a user table; or one InputError
    naming every value that is not a Japanese mobile number (by its data row when
    ``values`` come from a file and are indexed by row)."""
    classified = classify_phones(values)
    bad = ~classified["mobile"].to_numpy(dtype=bool)
    if bad.any():
        problems = [
            Problem(
                int(i) if table else None,
                "phone" if table else None,
                f"{value!r} is {_REFUSED[reason]} ({reason})",
            )
            for i, value, reason in zip(
                values.index[bad], values[bad], classified["reason"][bad], strict=True
            )
        ]
        raise InputError(source, problems)
    return list(dict.fromkeys(classified["e164"].tolist()))


@dataclass(frozen=True)
class OptoutsImported:
    """What an opt-out import did: numbers read (each once), newly listed, listed now."""

    rows: int
    added: int
    optouts_total: int

    def to_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "added": self.added, "optouts_total": self.optouts_total}

    def describe(self) -> str:
        """One line for a person: ``2 numbers added; 5 on the opt-out list``."""
        return i18n.ngettext(
            "{n} number added; {total} on the opt-out list",
            "{n} numbers added; {total} on the opt-out list",
            self.added,
        ).format(n=i18n.number(self.added), total=i18n.number(self.optouts_total))


@dataclass(frozen=True)
class OptoutAdded:
    """One number put on the opt-out list (``added`` false: it was listed already)."""

    phone: str  # E.164
    added: bool
    optouts_total: int

    def to_dict(self) -> dict[str, object]:
        return {"phone": self.phone, "added": self.added, "optouts_total": self.optouts_total}

    def describe(self) -> str:
        return (
            i18n._("added; {n} on the opt-out list")
            if self.added
            else i18n._("already listed; {n} on the opt-out list")
        ).format(n=i18n.number(self.optouts_total))


@dataclass(frozen=True)
class OptoutRemoved:
    """One number taken off the opt-out list."""

    phone: str  # E.164
    optouts_total: int

    def to_dict(self) -> dict[str, object]:
        return {"phone": self.phone, "removed": True, "optouts_total": self.optouts_total}

    def describe(self) -> str:
        return i18n._("removed; {n} on the opt-out list").format(n=i18n.number(self.optouts_total))


def optout_import(
    ctx: Context, path: str | Path, encoding: str = "auto", *, also: InTransaction | None = None
) -> OptoutsImported:
    phones = _e164(read_phone_list(path, encoding=encoding), str(path), table=True)
    added = _add_optouts(ctx, phones, "import", also=also)
    return OptoutsImported(len(phones), added, optout_count(ctx))


def optout_add(ctx: Context, phone: str, source: str = "cli") -> OptoutAdded:
    (e164,) = _e164(pd.Series([phone], dtype=object), "optout add")
    added = _add_optouts(ctx, [e164], source)
    return OptoutAdded(e164, bool(added), optout_count(ctx))


def optout_remove(ctx: Context, phone: str) -> OptoutRemoved:
    (e164,) = _e164(pd.Series([phone], dtype=object), "optout remove")
    with write(ctx.engine) as conn:
        removed = conn.execute(optouts.delete().where(optouts.c.phone == e164)).rowcount
    if not removed:
        raise NotFoundError(f"{mask_phone(e164)} is not on the opt-out list")
    return OptoutRemoved(e164, optout_count(ctx))


def _add_optouts(
    ctx: Context, phones: list[str], source: str, also: InTransaction | None = None
) -> int:
    now = clock.now()
    with write(ctx.engine) as conn:
        known = (
            set(conn.execute(select(optouts.c.phone).where(optouts.c.phone.in_(phones))).scalars())
            if len(phones) < 30_000
            else set(load_optouts_conn(conn))
        )
        new = [p for p in phones if p not in known]
        if new:
            conn.execute(
                optouts.insert(), [{"phone": p, "source": source, "created_at": now} for p in new]
            )
        if also is not None:
            also(conn, len(phones))
    return len(new)


def load_optouts_conn(conn: Connection) -> list[str]:
    return list(conn.execute(select(optouts.c.phone)).scalars())


def load_optouts(ctx: Context) -> list[str]:
    with read(ctx.engine) as conn:
        return load_optouts_conn(conn)


def optout_count(ctx: Context) -> int:
    with read(ctx.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(optouts)).scalar_one())
