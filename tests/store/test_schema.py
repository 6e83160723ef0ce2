"""The store's schema carries a version and migrates an existing database."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from sqlalchemy import create_engine, func, inspect, select

from smsops import store
from smsops.store.engine import StoreError
from smsops.store.migrations import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from smsops.store.schema import meta


def test_fresh_database_is_created_at_the_current_version(settings):
    engine = store.connect(settings.database_url)
    with engine.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        assert {"users", "deliveries", "delivery_items", "ledger", "optouts", "account"} <= set(
            inspect(conn).get_table_names()
        )


def test_version_1_database_keeps_its_data_when_migrated(settings):
    url = settings.database_url
    engine = create_engine(url)
    with engine.begin() as conn:  # a database as version 1 left it
        MIGRATIONS[0](conn)
        conn.execute(meta.insert().values(key="schema_version", value="1"))
        conn.exec_driver_sql(
            "INSERT INTO users (user_id, phone, updated_at) "
            "VALUES ('u1', '09010000001', '2026-01-01 00:00:00')"
        )
        cols = {c["name"] for c in inspect(conn).get_columns("delivery_items")}
        assert "dlr_status" not in cols
    engine.dispose()
    upgraded = store.connect(url)
    with upgraded.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        cols = {c["name"] for c in inspect(conn).get_columns("delivery_items")}
        assert {"dlr_status", "dlr_at", "owner"} <= cols
        assert "dispatchers" in inspect(conn).get_table_names()
        delivery_cols = {c["name"] for c in inspect(conn).get_columns("deliveries")}
        assert not {"claimed_by", "heartbeat_at"} & delivery_cols  # dropped in v4
        assert conn.exec_driver_sql("SELECT user_id FROM users").scalar_one() == "u1"


def _shape(url: str) -> dict[str, object]:
    """Tables, their columns (name, nullable) and indexes (name, columns, and the WHERE
    of a partial one)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        insp = inspect(conn)
        shape = {
            table: (
                sorted((c["name"], bool(c["nullable"])) for c in insp.get_columns(table)),
                sorted(
                    (i["name"], tuple(i["column_names"]), _predicate(i))
                    for i in insp.get_indexes(table)
                ),
            )
            for table in insp.get_table_names()
        }
    engine.dispose()
    return shape


def _predicate(index: Mapping[str, Any]) -> str | None:
    """A reflected index's WHERE (partial index), as the database spells it; None: none."""
    options = index.get("dialect_options", {})
    where = options.get("sqlite_where", options.get("postgresql_where"))
    return None if where is None else " ".join(str(where).split())


def test_migrating_from_version_1_ends_where_a_fresh_database_starts(settings, tmp_path):
    old = settings.database_url
    engine = create_engine(old)
    with engine.begin() as conn:
        MIGRATIONS[0](conn)
        conn.execute(meta.insert().values(key="schema_version", value="1"))
    engine.dispose()
    store.connect(old).dispose()  # v1 → latest, step by step
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    if old.startswith("postgresql"):
        from pg import create_database

        fresh = create_database(old.rsplit("/", 1)[0])
    store.connect(fresh).dispose()  # created from the current tables
    assert _shape(old) == _shape(fresh)


def test_migrate_is_idempotent(settings):
    engine = store.connect(settings.database_url)
    with engine.begin() as conn:
        assert migrate(conn) == SCHEMA_VERSION
        assert conn.execute(select(meta.c.value)).scalar_one() == str(SCHEMA_VERSION)


def test_a_database_from_a_newer_smsops_is_refused(settings):
    url = settings.database_url
    store.connect(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(meta.update().values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(StoreError, match="newer"):
        store.connect(url)


def test_a_bad_database_url_is_one_clear_error():
    with pytest.raises(StoreError, match="not a database URL"):
        store.connect("not a url")


def test_r16_version_4_optouts_in_the_0081_form_are_repaired_on_migration(settings):
    """Before 0081… read as +81, `optout add 0081-90-1000-0002` stored '+8100819010000002',
    which blocked no one; the migration stores the mobile it names (once)."""
    url = settings.database_url
    engine = create_engine(url)
    with engine.begin() as conn:  # a database as version 4 left it
        for step in MIGRATIONS[:4]:
            step(conn)
        conn.execute(meta.insert().values(key="schema_version", value="4"))
        for phone in ("+8100819010000002", "+8100819010000003", "+819010000003", "+8100813"):
            conn.exec_driver_sql(
                "INSERT INTO optouts (phone, source, created_at) "
                f"VALUES ('{phone}', 'cli', '2026-01-01 00:00:00')"
            )
    engine.dispose()
    upgraded = store.connect(url)
    with upgraded.connect() as conn:
        phones = sorted(conn.exec_driver_sql("SELECT phone FROM optouts").scalars())
    assert phones == ["+8100813", "+819010000002", "+819010000003"]


def test_r11_version_9_items_left_sending_are_settled_by_their_marks_on_migration(settings):
    """Version 10 claims chunks as ranges; items a crashed older dispatcher left
    ``sending`` are settled as its resume would have: up to its answered mark sent, after
    its handed mark pending again, between them or with no row left ``outcome_unknown``
    — never sent a second time."""
    url = settings.database_url
    engine = create_engine(url)
    with engine.begin() as conn:  # a database as version 9 left it, after a crash
        for step in MIGRATIONS[:9]:
            step(conn)
        conn.execute(meta.insert().values(key="schema_version", value="9"))
        conn.exec_driver_sql(
            "INSERT INTO deliveries (id, kind, status, messages, recipients, created_at, "
            "allocated) VALUES (1, 'bulk', 'sending', '[\"a\", \"b\"]', 4, "
            "'2026-01-01 00:00:00', TRUE)"
        )
        for seq in range(1, 5):
            for no in (1, 2):
                owner = "gone" if seq == 4 else "a"
                conn.exec_driver_sql(
                    "INSERT INTO delivery_items (delivery_id, seq, message_no, phone, status, "
                    f"ticket, owner) VALUES (1, {seq}, {no}, '+8190100000{seq:02}', 'sending', "
                    f"TRUE, '{owner}')"
                )
        conn.exec_driver_sql(  # a: answered up to (1, 2), handed up to (3, 1)
            "INSERT INTO dispatchers (owner, delivery_id, heartbeat_at, handed_seq, "
            "handed_message_no, answered_seq, answered_message_no) "
            "VALUES ('a', 1, '2026-01-01 00:00:00', 3, 1, 1, 2)"
        )
    engine.dispose()
    upgraded = store.connect(url)
    with upgraded.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT seq, message_no, status, error FROM delivery_items ORDER BY seq, message_no"
        ).all()
    assert [tuple(r) for r in rows] == [
        (1, 1, "sent", None),
        (1, 2, "sent", None),
        (2, 1, "error", "outcome_unknown"),
        (2, 2, "error", "outcome_unknown"),
        (3, 1, "error", "outcome_unknown"),
        (3, 2, "pending", None),
        (4, 1, "error", "outcome_unknown"),  # no row left to tell: it may have gone
        (4, 2, "error", "outcome_unknown"),
    ]


def test_version_12_database_gains_the_sending_window_and_keeps_its_deliveries(settings):
    """#11: v13 adds the account's window (none), and a delivery's outside_window (false)
    and paused_for (none: a pause before v13 was the gateway's)."""
    url = settings.database_url
    engine = create_engine(url)
    with engine.begin() as conn:  # a database as version 12 left it
        for step in MIGRATIONS[:12]:
            step(conn)
        conn.execute(meta.insert().values(key="schema_version", value="12"))
        conn.exec_driver_sql(
            "INSERT INTO account (id, plan, phone_field_enabled, timezone, updated_at) "
            "VALUES (1, 'standard', TRUE, 'Asia/Tokyo', '2026-01-01 00:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO deliveries (kind, status, messages, recipients, created_at, allocated,"
            " paused_reason) VALUES ('bulk', 'paused', '[\"a\"]', 1, '2026-01-01 00:00:00', "
            "TRUE, 'the gateway could not be reached')"
        )
    engine.dispose()
    upgraded = store.connect(url)
    with upgraded.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION >= 13
        account = conn.exec_driver_sql("SELECT plan, send_window FROM account").one()
        assert tuple(account) == ("standard", None)
        row = conn.exec_driver_sql(
            "SELECT status, outside_window, paused_for, paused_reason FROM deliveries"
        ).one()
        assert (row.status, bool(row.outside_window), row.paused_for) == ("paused", False, None)


def _pending_index_is_used(conn, sql: str) -> bool:
    """Does the database plan ``sql`` through ix_items_pending? (PostgreSQL is told to
    avoid sequential scans: the test tables are tiny.)"""
    if conn.dialect.name == "sqlite":
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
        return any("ix_items_pending" in str(row[-1]) for row in plan)
    conn.exec_driver_sql("SET enable_seqscan = off")
    plan = conn.exec_driver_sql(f"EXPLAIN {sql}").scalars().all()
    return any("ix_items_pending" in line for line in plan)


def test_issue12_version_13_items_index_keeps_only_pending_items_after_migration(settings):
    """#12: v14 replaces the index of items by (delivery, status, seq, message) with one of
    the pending items only (sending one removes its entry, nothing moves). The items are
    kept, and the query dispatch finds a delivery's next pending items with uses it."""
    from smsops.services.dispatch import _funded, _pending

    url = settings.database_url
    engine = create_engine(url)
    with engine.begin() as conn:  # a database as version 13 left it
        for step in MIGRATIONS[:13]:
            step(conn)
        conn.execute(meta.insert().values(key="schema_version", value="13"))
        conn.exec_driver_sql(
            "INSERT INTO deliveries (kind, status, messages, recipients, created_at, allocated)"
            " VALUES ('bulk', 'sending', '[\"a\"]', 3, '2026-01-01 00:00:00', TRUE)"
        )
        for seq, status in ((1, "sent"), (2, "pending"), (3, "pending")):
            conn.exec_driver_sql(
                "INSERT INTO delivery_items (delivery_id, seq, message_no, phone, status, "
                f"ticket) VALUES (1, {seq}, 1, '+8190100000{seq:02d}', '{status}', FALSE)"
            )
        indexes = {i["name"] for i in inspect(conn).get_indexes("delivery_items")}
        assert "ix_items_status" in indexes and "ix_items_pending" not in indexes
    engine.dispose()
    upgraded = store.connect(url)
    with upgraded.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION >= 14
        reflected = {i["name"]: i for i in inspect(conn).get_indexes("delivery_items")}
        assert "ix_items_status" not in reflected
        pending = reflected["ix_items_pending"]
        assert pending["column_names"] == ["delivery_id", "seq", "message_no"]
        assert "pending" in (_predicate(pending) or "")
        first = conn.execute(_funded(1).limit(1)).one()
        assert (first.seq, first.message_no) == (2, 1)
        assert conn.execute(select(func.count()).where(_pending(1))).scalar_one() == 2
        for stmt in (_funded(1).limit(1), select(func.count()).where(_pending(1))):
            # the status is in the SQL itself: a bound one could not use the index in a
            # generic plan (psycopg prepares a statement run five times)
            assert "pending" not in stmt.compile(conn).params.values()
            sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
            assert _pending_index_is_used(conn, sql), sql
