"""The database goes away mid-send: PostgreSQL stopped with ``pg_ctl stop -m immediate``
(and started again), or an SQLite file locked by another process for longer than the busy
timeout. The sender stops with one clear line (exit 1, no traceback), nothing is recorded
wrongly, and ``dispatch-due`` afterwards finishes the delivery exactly once."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from pg import PostgresServer
from sites import (
    CLI_TIMEOUT,
    Store,
    funded_site,
    keys_of,
    ledger_debits,
    message_args,
    outbox_keys,
    store_items,
    wait_for_lines,
)

USERS = 2_000  # x 2 messages at 1,000/s: 4 s of sending


def assert_finished_exactly_once(site) -> None:
    resumed = site.popen("dispatch-due", "--json")
    _, problems = resumed.communicate(timeout=CLI_TIMEOUT)
    assert resumed.returncode == 0, problems
    keys = outbox_keys(site.outbox)
    assert max(keys.values()) == 1 and len(keys) == 2 * USERS
    items = store_items(site.url, 1)
    assert items["status"].value_counts().to_dict() == {"sent": 2 * USERS}
    assert set(keys_of(1, items)) == set(keys)
    assert ledger_debits(site.url) == 2 * USERS


def assert_one_clear_line(proc, *said: str) -> None:
    out, err = proc.communicate(timeout=CLI_TIMEOUT)
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert any(s in err for s in said), err


@pytest.fixture
def own_postgres():
    server = PostgresServer().start()
    yield server
    server.close()


def test_postgres_stopped_mid_send_then_resumed_exactly_once(tmp_path: Path, own_postgres):
    site = funded_site(
        tmp_path, Store(own_postgres.url), USERS, 2 * USERS, rate_limit=1000, chunk_size=300
    )
    sender = site.popen("bulk", "create", *message_args(), "--yes")
    wait_for_lines(sender, site.outbox, 500, "the sender")
    own_postgres.stop("immediate")  # the server dies at once: connections drop
    assert_one_clear_line(sender, "database", "lost the connection")
    own_postgres.start()
    assert_finished_exactly_once(site)


def test_sqlite_locked_past_the_busy_timeout_then_resumed_exactly_once(tmp_path: Path):
    site = funded_site(
        tmp_path, Store(None), USERS, 2 * USERS, rate_limit=1000, chunk_size=300, busy_timeout=1
    )
    sender = site.popen("bulk", "create", *message_args(), "--yes")
    wait_for_lines(sender, site.outbox, 500, "the sender")
    held = threading.Event()

    def hold_the_lock() -> None:  # another process's writer: another connection, in fact
        conn = sqlite3.connect(site.url.removeprefix("sqlite:///"), timeout=30)
        conn.isolation_level = None
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(4)  # longer than the sender's 1 s busy timeout
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(30)
    assert_one_clear_line(sender, "locked")
    holder.join()
    assert_finished_exactly_once(site)
