"""Fast multi-row writes: the DB-API's executemany with plain tuples (no per-row dicts)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Dialect, Engine, Executable, Table, literal
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


def insert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    *,
    rows: Sequence[tuple],
    same: Mapping[str, object] | None = None,
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` in the current
    transaction; ``same``: columns with one value for every row (a delivery's id, a
    status), given once — on SQLite written into the statement as literals, so no row
    carries them and none is bound per row (a quarter of a delivery's insert, #12)."""
    if not rows:
        return
    same = same or {}
    if conn.dialect.name == "postgresql":  # COPY: an order of magnitude over INSERTs
        tail = tuple(same.values())
        copy_rows(
            conn,
            table.name,
            [*columns, *same],
            rows=(row + tail for row in rows) if tail else rows,
        )
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    values = [mark] * len(columns) + [_literal(conn, v) for v in same.values()]
    sql = f"INSERT INTO {table.name} ({', '.join([*columns, *same])}) VALUES ({', '.join(values)})"
    conn.exec_driver_sql(sql, list(rows) if not isinstance(rows, list) else rows)


def _literal(conn: Connection, value: object) -> str:
    """``value`` as an SQL literal of ``conn``'s dialect, quoted and escaped by SQLAlchemy
    (a str enum, as ItemStatus, as its text)."""
    plain = str(value) if isinstance(value, str) else value
    rendered = str(
        literal(plain).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    )
    return rendered.replace("%", "%%") if conn.dialect.paramstyle != "qmark" else rendered


def copy_rows(
    conn: Connection, name: str, columns: Sequence[str], *, rows: Iterable[tuple]
) -> None:
    """PostgreSQL only: ``COPY name (columns) FROM STDIN`` with ``rows``, in the current
    transaction."""
    raw = conn.connection.driver_connection
    assert raw is not None
    sql = f"COPY {name} ({', '.join(columns)}) FROM STDIN"
    with raw.cursor() as cur, cur.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


def execute_many(conn: Connection, sql_qmark: str, rows: Sequence[tuple]) -> None:
    """executemany a statement written with ``?`` placeholders, on any driver. Aware
    datetimes go to SQLite as naive UTC, as SQLAlchemy itself stores them."""
    if not rows:
        return
    sql, rows = _for_driver(conn.dialect, sql_qmark, rows)
    conn.exec_driver_sql(sql, list(rows) if not isinstance(rows, list) else rows)


def execute_one(conn: Connection, sql_qmark: str, row: tuple) -> int:
    """Execute one statement written with ``?`` placeholders on any driver, bypassing
    SQLAlchemy's statement machinery (for the few small statements run many times a
    second); return the number of rows it changed."""
    sql, (row,) = _for_driver(conn.dialect, sql_qmark, [row])
    return int(conn.exec_driver_sql(sql, row).rowcount)


def _for_driver(
    dialect: Dialect, sql_qmark: str, rows: Sequence[tuple]
) -> tuple[str, Sequence[tuple]]:
    """A statement written with ``?`` placeholders and its rows as the driver takes them:
    ``%s`` placeholders for psycopg; aware datetimes as SQLite's naive UTC text."""
    if dialect.name == "sqlite":
        rows = _naive_datetimes(rows)
    return (sql_qmark if dialect.paramstyle == "qmark" else sql_qmark.replace("?", "%s")), rows


class Autocommit:
    """One connection of ``engine``'s pool kept for many one-statement writes in a row,
    each committed on its own (SQLite outside a transaction, PostgreSQL in autocommit): a
    dispatcher's hand-offs, a few hundred a second, without a transaction's begin, pool
    checkout and reset each time — 0.4x the time of :func:`~smsops.store.write` with
    :func:`execute_one` on SQLite in the Kannel benchmark, one round trip instead of three
    on PostgreSQL (#10). Statements are written with ``?`` placeholders,
    as for :func:`execute_one`. A lost or locked database raises
    :class:`~smsops.errors.StoreUnavailable`, as :func:`~smsops.store.write` does, and
    the connection is dropped (the next statement takes a fresh one)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self._raw: Any = None  # the pool's connection, taken at the first statement

    def execute(self, sql_qmark: str, row: tuple) -> int:
        """Run and commit one statement; return the number of rows it changed."""
        from smsops.store.engine import unavailable_as_store_error

        sql, (row,) = _for_driver(self.engine.dialect, sql_qmark, [row])
        with unavailable_as_store_error(self.engine):
            try:
                if self._raw is None:
                    self._raw = self.engine.raw_connection()
                    if self.dialect != "sqlite":  # pysqlite already commits each one
                        self._raw.driver_connection.autocommit = True
                cursor = self._raw.cursor()
                try:
                    cursor.execute(sql, row)
                    return int(cursor.rowcount)
                finally:
                    cursor.close()
            except self.engine.dialect.loaded_dbapi.Error as exc:
                # as SQLAlchemy itself wraps a driver's error, so the store's boundary
                # says the same line whichever path met it
                dialect = self.engine.dialect
                raw = None if self._raw is None else self._raw.dbapi_connection
                lost = dialect.is_disconnect(exc, raw, None)
                self._drop()
                raise DBAPIError.instance(
                    sql, row, exc, dialect.loaded_dbapi.Error,
                    connection_invalidated=lost, dialect=dialect,
                ) from None  # fmt: skip

    def close(self) -> None:
        """Give the connection back to the pool as the pool lent it."""
        if self._raw is None:
            return
        try:
            if self.dialect != "sqlite":
                self._raw.driver_connection.autocommit = False
            self._raw.close()
        except Exception:  # a connection that broke meanwhile is not worth keeping
            self._drop()
        self._raw = None

    def _drop(self) -> None:
        if self._raw is not None:
            self._raw.invalidate()
            self._raw = None


def _naive_datetimes(rows: Sequence[tuple]) -> Sequence[tuple]:
    """Aware datetimes as the naive UTC text SQLAlchemy writes to SQLite. Only the columns
    that hold datetimes (seen in the first row) are touched, and each distinct value is
    converted once: a batch usually carries one timestamp for every row."""
    where = [i for i, v in enumerate(rows[0]) if isinstance(v, datetime)]
    if not where:
        return rows
    seen: dict[datetime, object] = {}

    def text(value: datetime) -> object:
        if value.tzinfo is None:
            return value
        if value not in seen:
            seen[value] = value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
        return seen[value]

    out = []
    for row in rows:
        fixed = list(row)
        for i in where:
            if fixed[i] is not None:
                fixed[i] = text(fixed[i])
        out.append(tuple(fixed))
    return out


def fetch_tuples(conn: Connection, stmt: Executable) -> list[tuple[Any, ...]]:
    """A query's rows as the driver gives them, plain tuples: no Row objects and no
    SQLAlchemy result processing, so only for columns the driver already returns as
    smsops reads them (integers, text; not SQLite's datetimes). For reads of thousands of
    rows many times a second (a dispatcher's chunks)."""
    result = conn.execute(stmt)
    try:
        return list(result.cursor.fetchall())  # type: ignore[union-attr]
    finally:
        result.close()


def fetch_frame(conn: Connection, stmt: Executable, columns: Sequence[str]) -> pd.DataFrame:
    """A query's rows as a DataFrame, built from plain tuples (building one from
    SQLAlchemy Row objects is several times slower)."""
    import pandas as pd  # here: the rest of this module serves commands that start fast (#12)

    rows = conn.execute(stmt).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=list(columns))


def fetch_frames(
    conn: Connection, stmt: Executable, columns: Sequence[str], *, batch: int
) -> Iterator[pd.DataFrame]:
    """A query's rows as DataFrames of at most ``batch`` rows each, as :func:`fetch_frame`
    builds them, fetched batch by batch (a server-side cursor on PostgreSQL): only one
    batch is ever held as Python rows (#12)."""
    import pandas as pd

    result = conn.execution_options(yield_per=max(batch, 1)).execute(stmt)
    try:
        for rows in result.partitions():
            yield pd.DataFrame([tuple(r) for r in rows], columns=list(columns))
    finally:
        result.close()


def driver_time(conn: Connection, value: datetime) -> object:
    """``value`` as :func:`execute_many` would hand it to the driver (naive UTC text on
    SQLite): converted once, so a batch carrying one timestamp for every row is passed on
    as it is instead of being copied row by row."""
    if conn.dialect.name != "sqlite" or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def fetch_strings(
    conn: Connection, sql: str, columns: Sequence[str], *, batch: int
) -> pd.DataFrame:
    """The rows of ``sql`` (plain SQL whose every column is text or NULL) as a frame of
    ``string[pyarrow]`` columns, fetched ``batch`` rows at a time through the driver's
    cursor: only one batch is ever held as Python objects (#12)."""
    import pandas as pd
    import pyarrow as pa

    parts: list[list[pa.Array]] = [[] for _ in columns]
    for converted in _string_batches(conn, sql, columns, batch=batch):
        for i, part in enumerate(parts):
            part.append(converted.field(i))
    return pd.DataFrame(
        {
            name: pd.arrays.ArrowStringArray(pa.chunked_array(part, type=pa.string()))
            for name, part in zip(columns, parts, strict=True)
        }
    )


def iter_strings(
    conn: Connection, sql: str, columns: Sequence[str], *, batch: int
) -> Iterator[pd.DataFrame]:
    """:func:`fetch_strings` in frames of at most ``batch`` rows, one at a time: only one
    batch is ever in memory, as Python rows or as a frame (#12). On PostgreSQL through a
    server-side cursor, so the server holds the rest of the result."""
    import pandas as pd

    for converted in _string_batches(conn, sql, columns, batch=batch):
        yield pd.DataFrame(
            {name: pd.arrays.ArrowStringArray(converted.field(i)) for i, name in enumerate(columns)}
        )


def _string_batches(
    conn: Connection, sql: str, columns: Sequence[str], *, batch: int
) -> Iterator[pa.StructArray]:
    """The rows of ``sql`` as one struct array (a text field per column) per ``batch`` rows."""
    import pyarrow as pa

    # the rows as they come (tuples) convert as one struct array: transposing them first
    # with zip(*rows) costs as much as fetching them
    row = pa.struct([(name, pa.string()) for name in columns])
    if conn.dialect.name == "postgresql":  # a named (server-side) cursor: psycopg's plain
        # one reads the whole result into the client at execute
        driver = conn.connection.driver_connection
        assert driver is not None
        cursor = driver.cursor(name="smsops_strings")
    else:
        cursor = conn.connection.cursor()
    try:
        cursor.execute(sql)
        while rows := cursor.fetchmany(max(batch, 1)):
            converted = pa.array(rows, type=row)
            del rows
            yield converted
    finally:
        cursor.close()
