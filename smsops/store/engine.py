"""Opening the store: SQLite tuned for one writer at a time, or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from smsops.clock import now
from smsops.errors import StoreError, StoreUnavailable, Text  # defined there, importable here
from smsops.i18n import N_
from smsops.store.migrations import migrate
from smsops.store.schema import ensure_account


def connect(url: str, busy_timeout: float = 60.0) -> Engine:
    """Open (and create or migrate) the store at ``url``. On SQLite, a writer waits up to
    ``busy_timeout`` seconds for another process's write lock, then gives up."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            Text(N_("SMSOPS_DATABASE_URL {url} is not a database URL"), url=repr(url))
        ) from None
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite(url, parsed.database, busy_timeout)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        with write(engine) as conn:
            migrate(conn)
            ensure_account(conn, now())
    except RuntimeError as exc:  # a schema this smsops cannot handle
        raise StoreError(str(exc)) from None  # refusals.py has its template
    except StoreUnavailable as exc:
        detail = exc.text if exc.text is not None else exc.message
        raise StoreError(Text(N_("cannot open the database: {detail}"), detail=detail)) from None
    return engine


def _sqlite(url: str, database: str | None, busy_timeout: float) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy issue BEGIN itself (below) instead of pysqlite's implicit one.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
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
    with unavailable_as_store_error(engine), engine.begin() as conn:
        yield conn


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """One reading transaction (a consistent snapshot; takes no write lock)."""
    with (
        unavailable_as_store_error(engine),
        engine.connect().execution_options(smsops_read=True) as conn,
        conn.begin(),
    ):
        yield conn


@contextmanager
def unavailable_as_store_error(engine: Engine) -> Iterator[None]:
    """Translate a lost or locked database into one clear :class:`StoreUnavailable` at the
    store's boundary (as httpx's ``map_exceptions`` does for its transports)."""
    try:
        yield
    except OperationalError as exc:
        where = engine.url.render_as_string()  # hides the password
        orig = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        if "locked" in orig:
            line = N_("the database {where} is locked by another process: {detail}")
        else:
            line = N_("the database {where} is unavailable: {detail}")
        raise StoreUnavailable(Text(line, where=where, detail=orig)) from None
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        where = engine.url.render_as_string()
        raise StoreUnavailable(
            Text(N_("lost the connection to the database {where}"), where=where)
        ) from None
