"""store.bulk's fast paths write and read what the plain statements would (#12)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from smsops import store
from smsops.store.bulk import fetch_tuples, insert_rows
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
