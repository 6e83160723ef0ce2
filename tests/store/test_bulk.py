"""store.bulk's fast paths write and read what the plain statements would (#12)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from smsops import store
from smsops.errors import StoreUnavailable
from smsops.store.bulk import Autocommit, fetch_tuples, insert_rows
from smsops.store.schema import deliveries, items


def _delivery(conn) -> int:
    return conn.execute(
        deliveries.insert().values(
            kind="bulk",
            status="queued",
            messages='["a"]',
            recipients=2,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
            allocated=False,
        )
    ).inserted_primary_key[0]


def test_issue12_insert_rows_writes_the_values_given_once_into_every_row(settings):
    """``same`` columns (a literal in SQLite's statement, appended to each row of
    PostgreSQL's COPY) land in every row as if each row had carried them; a quote and a
    percent sign in one come through as they are."""
    engine = store.connect(settings.database_url)
    with store.write(engine) as conn:
        d = _delivery(conn)
        insert_rows(
            conn,
            items,
            ["seq", "message_no", "phone", "user_id"],
            rows=[(1, 1, "+819010000001", "u1"), (1, 2, "+819010000001", None)],
            same={"delivery_id": d, "status": "pending", "ticket": False, "error": "o'k 100%"},
        )
    with store.read(engine) as conn:
        rows = conn.execute(
            select(
                items.c.delivery_id,
                items.c.seq,
                items.c.message_no,
                items.c.phone,
                items.c.user_id,
                items.c.status,
                items.c.ticket,
                items.c.error,
            ).order_by(items.c.seq, items.c.message_no)
        ).all()
    assert [tuple(r) for r in rows] == [
        (d, 1, 1, "+819010000001", "u1", "pending", False, "o'k 100%"),
        (d, 1, 2, "+819010000001", None, "pending", False, "o'k 100%"),
    ]


def test_issue12_fetch_tuples_gives_the_rows_as_plain_tuples(settings):
    engine = store.connect(settings.database_url)
    with store.write(engine) as conn:
        d = _delivery(conn)
        insert_rows(
            conn,
            items,
            ["delivery_id", "seq", "message_no", "phone", "status", "ticket"],
            rows=[(d, s, 1, f"+81901000000{s}", "pending", False) for s in (2, 1)],
        )
    with store.read(engine) as conn:
        got = fetch_tuples(
            conn, select(items.c.seq, items.c.message_no, items.c.phone).order_by(items.c.seq)
        )
    assert got == [(1, 1, "+819010000001"), (2, 1, "+819010000002")]
    assert all(type(row) is tuple for row in got)


def test_issue10_autocommit_commits_each_statement_and_gives_the_connection_back_as_lent(
    settings,
):
    """The hand-offs' kept connection: each statement is durable on its own (another
    connection sees it at once, a datetime as SQLAlchemy reads it), the count of rows it
    changed comes back, and once closed the pool's connection still runs transactions that
    roll back (PostgreSQL's autocommit switched off again)."""
    engine = store.connect(settings.database_url)
    with store.write(engine) as conn:
        d = _delivery(conn)
    at = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
    quick = Autocommit(engine)
    try:
        sql = "UPDATE deliveries SET status = ?, scheduled_at = ? WHERE id = ?"
        assert quick.execute(sql, ("scheduled", at, d)) == 1
        with store.read(engine) as conn:
            row = conn.execute(
                select(deliveries.c.status, deliveries.c.scheduled_at).where(deliveries.c.id == d)
            ).one()
        assert row.status == "scheduled"
        assert row.scheduled_at.replace(tzinfo=row.scheduled_at.tzinfo or UTC) == at
        assert quick.execute(sql, ("queued", at, d + 1)) == 0  # no such delivery
        lent = quick._raw.driver_connection  # what the pool will lend again
    finally:
        quick.close()
    assert getattr(lent, "autocommit", False) is False  # PostgreSQL's, as the pool lent it
    with pytest.raises(RuntimeError), store.write(engine) as conn:
        conn.execute(deliveries.update().values(status="cancelled"))
        raise RuntimeError("roll back")
    with store.read(engine) as conn:
        assert conn.execute(select(deliveries.c.status)).scalar_one() == "scheduled"


def test_issue10_autocommit_on_a_locked_database_says_so_in_one_line(tmp_path):
    """An SQLite file another process holds past the busy timeout: StoreUnavailable, as a
    transaction of the store says it, and the next statement works once the lock is gone."""
    path = tmp_path / "smsops.db"
    engine = store.connect(f"sqlite:///{path}", busy_timeout=0.2)
    with store.write(engine) as conn:
        d = _delivery(conn)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    quick = Autocommit(engine)
    try:
        with pytest.raises(StoreUnavailable, match="locked by another process"):
            quick.execute("UPDATE deliveries SET status = ? WHERE id = ?", ("scheduled", d))
        holder.execute("ROLLBACK")
        assert quick.execute("UPDATE deliveries SET status = ? WHERE id = ?", ("sending", d)) == 1
    finally:
        quick.close()
        holder.close()
