"""Opening the store: SQLite tuned for one writer at a time, or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from smsops.clock import now
from smsops.errors import SmsopsError
from smsops.store.migrations import migrate
from smsops.store.schema import ensure_account


class StoreError(SmsopsError):
    code = "store"


def connect(url: str) -> Engine:
    """Open (and create or migrate) the store at ``url``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"SMSOPS_DATABASE_URL {url!r} is not a database URL") from None
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite(url, parsed.database)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        with write(engine) as conn:
            migrate(conn)
            ensure_account(conn, now())
    except RuntimeError as exc:  # a schema this smsops cannot handle
        raise StoreError(str(exc)) from None
    except OperationalError as exc:
        where = parsed.render_as_string()  # hides the password
        raise StoreError(f"cannot open the database {where}: {exc.orig}") from None
    return engine


def _sqlite(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy issue BEGIN itself (below) instead of pysqlite's implicit one.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # A writing transaction takes the write lock up front: two dispatchers can never
        # read the same balance and both spend it (R11), and no lock-upgrade deadlock.
        # Readers (see read()) stay deferred and run beside the writer (WAL).
        if conn.get_execution_options().get("smsops_read"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """One writing transaction: committed on success, rolled back on any error."""
    with engine.begin() as conn:
        yield conn


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """One reading transaction (a consistent snapshot; takes no write lock)."""
    with engine.connect().execution_options(smsops_read=True) as conn, conn.begin():
        yield conn
