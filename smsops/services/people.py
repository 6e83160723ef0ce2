"""Users and the opt-out list (R2, R16): imports are all-or-nothing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, func, select

from smsops import clock
from smsops.domain.phones import classify_phones, mask_phone
from smsops.errors import InputError, Problem, SmsopsError
from smsops.services.context import Context
from smsops.store import read, write
from smsops.store.bulk import copy_rows, execute_many, fetch_frame
from smsops.store.schema import optouts, users
from smsops.tables import read_phone_list, read_users_csvs

_BATCH = 50_000


@dataclass(frozen=True)
class ImportResult:
    """What an import did: rows read, users stored, and which column held the phones."""

    rows: int
    users_total: int
    # the header read as the phone number (R3), e.g. "携帯電話番号"; files that name it
    # differently give their names in file order, "a, b"
    phone_column: str = "phone"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "users_total": self.users_total,
            "phone_column": self.phone_column,
        }


def import_users(ctx: Context, paths: Sequence[str | Path], encoding: str = "auto") -> ImportResult:
    """Read every file (all problems reported at once), then upsert all rows by user_id in
    one transaction: a bad file changes nothing."""
    frame = read_users_csvs(list(paths), encoding=encoding)
    return upsert_users(ctx, frame)


def upsert_users(ctx: Context, frame: pd.DataFrame) -> ImportResult:
    """Insert new users at the end of the registration order; update known ones in place."""
    extra = [c for c in frame.columns if c not in ("user_id", "phone")]
    if extra:
        attrs = frame[extra].to_json(orient="records", lines=True, force_ascii=False).splitlines()
    else:
        attrs = [None] * len(frame)
    now = clock.now()
    rows = list(
        zip(
            frame["user_id"].tolist(),
            frame["phone"].astype(object).where(frame["phone"].notna(), None).tolist(),
            attrs,
            strict=True,
        )
    )
    with write(ctx.engine) as conn:
        if conn.dialect.name == "postgresql":
            _upsert_by_copy(ctx, conn, rows, now)
        else:
            for start in range(0, len(rows), _BATCH):
                part = rows[start : start + _BATCH]
                execute_many(conn, _UPSERT + _VALUES, [(u, p, a, now) for u, p, a in part])
                ctx.progress(min(start + _BATCH, len(rows)), len(rows), "importing users")
        total = conn.execute(select(func.count()).select_from(users)).scalar_one()
    return ImportResult(
        len(frame), int(total), ", ".join(frame.attrs.get("phone_columns") or ["phone"])
    )


def _upsert_by_copy(ctx: Context, conn: Connection, rows: list[tuple], now: datetime) -> None:
    """PostgreSQL: COPY the rows into a temporary table, then upsert them in one statement
    (in file order, so new users are numbered in registration order). Twice as fast as
    executemany. The user ids are unique: the table readers refuse repeats."""
    conn.exec_driver_sql(
        "CREATE TEMPORARY TABLE users_in (n bigint, user_id text, phone text, attrs text) "
        "ON COMMIT DROP"
    )
    for start in range(0, len(rows), _BATCH):
        part = rows[start : start + _BATCH]
        copy_rows(conn, "users_in", ["n", "user_id", "phone", "attrs"], _numbered(part, start))
        ctx.progress(min(start + _BATCH, len(rows)), len(rows), "importing users")
    conn.exec_driver_sql(
        f"{_UPSERT} SELECT user_id, phone, attrs, %s FROM users_in ORDER BY n {_ON_CONFLICT}",
        (now,),
    )


def _numbered(rows: list[tuple], start: int) -> Iterator[tuple]:
    for n, row in enumerate(rows, start):
        yield (n, *row)


# Plain SQL that SQLite and PostgreSQL both speak; executemany of tuples is several times
# faster than a Core statement with a dict per row.
_UPSERT = "INSERT INTO users (user_id, phone, attrs, updated_at)"
_ON_CONFLICT = (
    "ON CONFLICT (user_id) DO UPDATE SET phone = excluded.phone, attrs = excluded.attrs, "
    "updated_at = excluded.updated_at"
)
_VALUES = f" VALUES (?, ?, ?, ?) {_ON_CONFLICT}"


def load_users(ctx: Context, *, with_attrs: bool = False) -> pd.DataFrame:
    """The stored users in registration order (user_id, phone[, the other columns])."""
    cols = [users.c.user_id, users.c.phone] + ([users.c.attrs] if with_attrs else [])
    with read(ctx.engine) as conn:
        frame = fetch_frame(conn, select(*cols).order_by(users.c.pos), [c.name for c in cols])
    frame["user_id"] = frame["user_id"].astype("string[pyarrow]")
    frame["phone"] = frame["phone"].astype("string[pyarrow]")
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


def users_count(ctx: Context) -> int:
    with read(ctx.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(users)).scalar_one())


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


def optout_import(ctx: Context, path: str | Path, encoding: str = "auto") -> dict[str, int]:
    phones = _e164(read_phone_list(path, encoding=encoding), str(path), table=True)
    added = _add_optouts(ctx, phones, "import")
    return {"rows": len(phones), "added": added, "optouts_total": optout_count(ctx)}


def optout_add(ctx: Context, phone: str, source: str = "cli") -> dict[str, object]:
    (e164,) = _e164(pd.Series([phone], dtype=object), "optout add")
    added = _add_optouts(ctx, [e164], source)
    return {"phone": e164, "added": bool(added), "optouts_total": optout_count(ctx)}


def optout_remove(ctx: Context, phone: str) -> dict[str, object]:
    (e164,) = _e164(pd.Series([phone], dtype=object), "optout remove")
    with write(ctx.engine) as conn:
        removed = conn.execute(optouts.delete().where(optouts.c.phone == e164)).rowcount
    if not removed:
        raise SmsopsError(f"{mask_phone(e164)} is not on the opt-out list")
    return {"phone": e164, "removed": True, "optouts_total": optout_count(ctx)}


def _add_optouts(ctx: Context, phones: list[str], source: str) -> int:
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
    return len(new)


def load_optouts_conn(conn: Connection) -> list[str]:
    return list(conn.execute(select(optouts.c.phone)).scalars())


def load_optouts(ctx: Context) -> list[str]:
    with read(ctx.engine) as conn:
        return load_optouts_conn(conn)


def optout_count(ctx: Context) -> int:
    with read(ctx.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(optouts)).scalar_one())
