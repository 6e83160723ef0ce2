"""Fast multi-row writes: the DB-API's executemany with plain tuples (no per-row dicts)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Table


def insert_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple]
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` in the current transaction."""
    if not rows:
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))})"
    )
    conn.exec_driver_sql(sql, list(rows) if not isinstance(rows, list) else rows)


def update_rows(conn: Connection, sql_qmark: str, rows: Sequence[tuple]) -> None:
    """executemany an UPDATE written with ``?`` placeholders, on any driver."""
    if not rows:
        return
    sql = sql_qmark if conn.dialect.paramstyle == "qmark" else sql_qmark.replace("?", "%s")
    conn.exec_driver_sql(sql, list(rows) if not isinstance(rows, list) else rows)
