"""Who is sending what: dispatcher identities, registration and liveness."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import Connection, func, select

from smsops import clock
from smsops.store.schema import dispatchers


@cache
def process_id() -> str:
    """``host:pid:start-time``: unique to this process, even after a pid is reused."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as fh:
            start = fh.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        start = "0"
    return f"{socket.gethostname()}:{os.getpid()}:{start}"


def db_now(conn: Connection) -> datetime:
    """The database's clock: leases are judged by one clock for every host (PostgreSQL's;
    an SQLite file has no server, and every process using it runs on its host)."""
    if conn.dialect.name == "postgresql":
        value = conn.execute(select(func.clock_timestamp())).scalar_one()
        return clock.from_store(value) or clock.now()
    return clock.now()


def _alive(owner: str | None, heartbeat: datetime | None, lease: float, now: datetime) -> bool:
    """Is this dispatcher still at work? Its heartbeat must be younger than the lease (a
    process that stopped sending but lives on, say a notebook kernel, lets go), and on
    this host the kernel must also know the process (not a zombie): a killed dispatcher is
    resumed at once, without waiting for the lease."""
    if not owner:
        return False
    beat = clock.from_store(heartbeat)
    if beat is None or now - beat >= timedelta(seconds=lease):
        return False
    host, pid, start = [*owner.split(":"), "", "", ""][:3]
    if host != socket.gethostname():
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return len(fields) > 19 and fields[0] not in ("Z", "X") and fields[19] == start


def live_dispatchers(conn: Connection, delivery_id: int, lease: float) -> list[str]:
    rows = conn.execute(
        select(dispatchers.c.owner, dispatchers.c.heartbeat_at).where(
            dispatchers.c.delivery_id == delivery_id
        )
    ).all()
    now = db_now(conn)
    return [r.owner for r in rows if _alive(r.owner, r.heartbeat_at, lease, now)]


def register(conn: Connection, delivery_id: int) -> None:
    """Record this process as working on ``delivery_id`` (one delivery at a time)."""
    me = process_id()
    conn.execute(dispatchers.delete().where(dispatchers.c.owner == me))
    conn.execute(
        dispatchers.insert().values(owner=me, delivery_id=delivery_id, heartbeat_at=db_now(conn))
    )
