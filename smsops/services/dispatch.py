"""Sending a saved delivery (R10, R11): claim it, allocate tickets at send time, send
chunk by chunk through the gateway, record every result.

Crash safety. A delivery is claimed by one process (``host:pid:start``) that shows life
with a heartbeat. Before a chunk is handed to the gateway its items become ``sending``;
after the gateway answers they become ``sent`` or ``error`` (with a refund) in one
transaction. A process that dies leaves ``sending`` items; whoever resumes asks the
gateway which of their idempotency keys it accepted, so nothing is sent twice and
nothing is lost. Tickets are debited once, when the delivery is allocated.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

import pandas as pd
from sqlalchemy import Connection, and_, func, or_, select

from smsops import clock
from smsops.domain.tickets import SENT, allocate_plan
from smsops.errors import StateError
from smsops.gateways import Gateway, idempotency_keys
from smsops.services.account import lock_balance
from smsops.services.context import Context
from smsops.services.deliveries import FINAL, delivery_summary
from smsops.store import read, write
from smsops.store.bulk import update_rows
from smsops.store.schema import deliveries, items, ledger, optouts


@cache
def process_id() -> str:
    """``host:pid:start-time``: unique to this process, even after a pid is reused."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as fh:
            start = fh.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        start = "0"
    return f"{socket.gethostname()}:{os.getpid()}:{start}"


def _alive(claimed_by: str | None, heartbeat, lease: float) -> bool:  # type: ignore[no-untyped-def]
    """Is the process that claimed a delivery still sending it?"""
    if not claimed_by:
        return False
    host, pid, start = [*claimed_by.split(":"), "", "", ""][:3]
    if host == socket.gethostname():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[19] == start
        except (OSError, IndexError):
            return False
    beat = clock.from_store(heartbeat)
    return beat is not None and clock.now() - beat < timedelta(seconds=lease)


@dataclass(frozen=True)
class DispatchResult:
    delivery_id: int
    status: str
    sent: int
    errors: int
    tickets_used: int
    resumed: bool

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def due_ids(ctx: Context) -> list[int]:
    """Deliveries to send now: scheduled ones whose time has come, queued ones, and ones
    whose sending process died — oldest first."""
    now = clock.now()
    with read(ctx.engine) as conn:
        rows = conn.execute(
            select(
                deliveries.c.id,
                deliveries.c.status,
                deliveries.c.claimed_by,
                deliveries.c.heartbeat_at,
            )
            .where(
                or_(
                    and_(deliveries.c.status == "scheduled", deliveries.c.scheduled_at <= now),
                    deliveries.c.status.in_(("queued", "sending")),
                )
            )
            .order_by(
                func.coalesce(deliveries.c.scheduled_at, deliveries.c.created_at), deliveries.c.id
            )
        ).all()
    lease = ctx.settings.lease_seconds
    return [
        r.id
        for r in rows
        if r.status != "sending" or not _alive(r.claimed_by, r.heartbeat_at, lease)
    ]


def dispatch_due(ctx: Context) -> list[DispatchResult]:
    """Send every delivery that is due, resuming any whose process died."""
    done = []
    for delivery_id in due_ids(ctx):
        try:
            done.append(dispatch(ctx, delivery_id))
        except StateError:
            continue  # another process took it between the listing and the claim
    return done


@dataclass(frozen=True)
class Session:
    """One process's claim on one delivery, from :func:`begin` to :func:`finish`."""

    delivery_id: int
    owner: str
    resumed: bool


def dispatch(ctx: Context, delivery_id: int) -> DispatchResult:
    """Send one delivery now (it must be due, or queued, or abandoned by a dead process)."""
    session = begin(ctx, delivery_id)
    gateway = ctx.gateway()
    try:
        with keep_alive(ctx, session):
            while send_chunk(ctx, session, gateway):
                pass
    finally:
        gateway.close()
    return finish(ctx, session)


def begin(ctx: Context, delivery_id: int) -> Session:
    """Claim a delivery for this process and allocate its tickets (once, R10)."""
    owner = process_id()
    session = Session(delivery_id, owner, _claim(ctx, delivery_id, owner))
    _allocate(ctx, delivery_id)
    return session


@contextmanager
def keep_alive(ctx: Context, session: Session) -> Iterator[None]:
    """Show life (a heartbeat) while the body runs, so no one else resumes the delivery."""
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(ctx, session.delivery_id, session.owner, stop), daemon=True
    )
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


def send_chunk(ctx: Context, session: Session, gateway: Gateway) -> int:
    """Send the next chunk; return how many pairs it held (0: nothing left).

    First settles items a previous attempt handed to the gateway without recording the
    outcome (a crash, or a retried task), so a retry never sends a message twice.
    """
    _reconcile(ctx, gateway, session.delivery_id)
    return _send_next(ctx, gateway, session.delivery_id, session.owner)


def finish(ctx: Context, session: Session) -> DispatchResult:
    status = _finish(ctx, session.delivery_id, session.owner)
    s = delivery_summary(ctx, session.delivery_id)
    return DispatchResult(
        session.delivery_id,
        status,
        int(s["sent"]),
        int(s["errors"]),
        int(s["tickets_used"]),
        session.resumed,
    )


def _claim(ctx: Context, delivery_id: int, me: str) -> bool:
    """Take the delivery for this process; True when resuming someone else's work."""
    now = clock.now()
    with write(ctx.engine) as conn:
        row = conn.execute(
            select(deliveries).where(deliveries.c.id == delivery_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise StateError(f"no delivery {delivery_id}")
        if row.status in FINAL:
            raise StateError(f"delivery {delivery_id} is already {row.status}")
        if row.status == "scheduled" and clock.from_store(row.scheduled_at) > now:  # type: ignore[operator]
            raise StateError(f"delivery {delivery_id} is scheduled for later")
        resumed = row.status == "sending"
        if (
            resumed
            and row.claimed_by != me
            and _alive(row.claimed_by, row.heartbeat_at, ctx.settings.lease_seconds)
        ):
            raise StateError(f"delivery {delivery_id} is being sent by {row.claimed_by}")
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id)
            .values(
                status="sending", claimed_by=me, heartbeat_at=now, started_at=row.started_at or now
            )
        )
    return resumed


def _heartbeat(ctx: Context, delivery_id: int, me: str, stop: threading.Event) -> None:
    while not stop.wait(ctx.settings.lease_seconds / 4):
        with write(ctx.engine) as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id, deliveries.c.claimed_by == me)
                .values(heartbeat_at=clock.now())
            )


def _pending(delivery_id: int):  # type: ignore[no-untyped-def]
    return and_(items.c.delivery_id == delivery_id, items.c.status == "pending")


def _allocate(ctx: Context, delivery_id: int) -> None:
    """R10 at send time: opted-out numbers leave (R16), then the balance is spent over the
    pairs in order (allocate_plan) and debited at once (R11); the rest are errors."""
    with write(ctx.engine) as conn:
        if conn.execute(
            select(deliveries.c.allocated).where(deliveries.c.id == delivery_id)
        ).scalar_one():
            return
        now = clock.now()
        conn.execute(
            items.update()
            .where(_pending(delivery_id), items.c.phone.in_(select(optouts.c.phone)))
            .values(status="error", error="opted_out", sent_at=now)
        )
        balance = lock_balance(conn)
        pairs = pd.DataFrame(
            conn.execute(
                select(items.c.seq, items.c.message_no)
                .where(_pending(delivery_id))
                .order_by(items.c.seq, items.c.message_no)
            ).all(),
            columns=["seq", "message_no"],
        )
        plan = allocate_plan(pairs, balance)
        funded = int((plan["status"] == SENT).sum())
        if funded:
            last = plan.iloc[funded - 1]
            s, m = int(last["seq"]), int(last["message_no"])
            conn.execute(
                items.update()
                .where(
                    _pending(delivery_id),
                    or_(items.c.seq < s, and_(items.c.seq == s, items.c.message_no <= m)),
                )
                .values(ticket=True)
            )
            conn.execute(
                ledger.insert().values(
                    at=now, kind="debit", amount=-funded, delivery_id=delivery_id
                )
            )
        if funded < len(plan):
            conn.execute(
                items.update()
                .where(_pending(delivery_id), items.c.ticket.is_(False))
                .values(status="error", error="insufficient_tickets", sent_at=now)
            )
        conn.execute(
            deliveries.update().where(deliveries.c.id == delivery_id).values(allocated=True)
        )


def _reconcile(ctx: Context, gateway: Gateway, delivery_id: int) -> None:
    """After a crash: items handed to the gateway whose outcome was not recorded become
    sent if the gateway has their key, else pending again; if the gateway cannot tell,
    they are errors (``outcome_unknown``) rather than risk a second send."""
    with read(ctx.engine) as conn:
        rows = conn.execute(
            select(items.c.seq, items.c.message_no).where(
                items.c.delivery_id == delivery_id, items.c.status == "sending"
            )
        ).all()
    if not rows:
        return
    accepted = gateway.accepted_keys(delivery_id)
    frame = pd.DataFrame(rows, columns=["seq", "message_no"])
    keys = idempotency_keys(delivery_id, frame["seq"], frame["message_no"])
    now = clock.now()
    done: list[tuple[str, str | None, object, int, int, int]]
    if accepted is None:
        done = [("error", "outcome_unknown", now, delivery_id, s, m) for s, m in rows]
    else:
        hit = keys.isin(accepted).to_numpy()
        done = [
            ("sent" if h else "pending", None, now if h else None, delivery_id, s, m)
            for h, (s, m) in zip(hit, rows, strict=True)
        ]
    with write(ctx.engine) as conn:
        update_rows(
            conn,
            "UPDATE delivery_items SET status = ?, error = ?, sent_at = ? "
            "WHERE delivery_id = ? AND seq = ? AND message_no = ? "
            "AND status = 'sending'",
            done,
        )


def _next_chunk(conn: Connection, delivery_id: int, size: int) -> pd.DataFrame:
    """The next funded pending pairs in send order, cut at a recipient boundary."""
    rows = conn.execute(
        select(items.c.seq, items.c.message_no, items.c.phone)
        .where(_pending(delivery_id), items.c.ticket.is_(True))
        .order_by(items.c.seq, items.c.message_no)
        .limit(size + 2)
    ).all()
    chunk = pd.DataFrame(rows, columns=["seq", "message_no", "phone"])
    if len(chunk) > size:
        # Whole recipients only (at most 2 messages each, hence the +2 above): the
        # chunk's items are then exactly the funded pending ones in its seq range.
        whole = chunk[chunk["seq"] < chunk["seq"].iloc[size]]
        chunk = whole if len(whole) else chunk[chunk["seq"] == chunk["seq"].iloc[0]]
    return chunk


def _send_next(ctx: Context, gateway: Gateway, delivery_id: int, me: str) -> int:
    with read(ctx.engine) as conn:
        chunk = _next_chunk(conn, delivery_id, ctx.settings.chunk_size)
        if chunk.empty:
            return 0
        texts = json.loads(
            conn.execute(
                select(deliveries.c.messages).where(deliveries.c.id == delivery_id)
            ).scalar_one()
        )
        left = int(
            conn.execute(
                select(func.count()).where(_pending(delivery_id), items.c.ticket.is_(True))
            ).scalar_one()
        )
        done = int(
            conn.execute(
                select(func.count()).where(
                    items.c.delivery_id == delivery_id,
                    items.c.status.in_(("sent", "error")),
                    items.c.ticket.is_(True),
                )
            ).scalar_one()
        )
    first, last = int(chunk["seq"].iloc[0]), int(chunk["seq"].iloc[-1])
    in_chunk = and_(items.c.delivery_id == delivery_id, items.c.seq >= first, items.c.seq <= last)
    with write(ctx.engine) as conn:
        owner = conn.execute(
            select(deliveries.c.claimed_by).where(deliveries.c.id == delivery_id)
        ).scalar_one()
        if owner != me:
            raise StateError(f"delivery {delivery_id} was taken over by {owner}")
        conn.execute(
            items.update()
            .where(in_chunk, items.c.status == "pending", items.c.ticket.is_(True))
            .values(status="sending")
        )
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id)
            .values(heartbeat_at=clock.now())
        )
    batch = pd.DataFrame(
        {
            "delivery_id": delivery_id,
            "seq": chunk["seq"],
            "message_no": chunk["message_no"],
            "phone": chunk["phone"],
            "text": pd.Series(texts, dtype=object).iloc[chunk["message_no"] - 1].to_numpy(),
            "idempotency_key": idempotency_keys(delivery_id, chunk["seq"], chunk["message_no"]),
        }
    )
    results = gateway.send(batch)
    _record(ctx, delivery_id, batch, results, in_chunk)
    ctx.progress(done + len(chunk), done + left, "sending")
    return len(chunk)


def _record(
    ctx: Context, delivery_id: int, batch: pd.DataFrame, results: pd.DataFrame, in_chunk
) -> None:  # type: ignore[no-untyped-def]
    """One transaction: errors (refunded) first, then every other handed item is sent."""
    merged = batch.merge(results, on="idempotency_key", how="left")
    failed = merged[merged["status"] != "sent"]
    now = clock.now()
    with write(ctx.engine) as conn:
        if len(failed):
            update_rows(
                conn,
                "UPDATE delivery_items SET status = 'error', error = ?, "
                "sent_at = ? WHERE delivery_id = ? AND seq = ? AND message_no = ?",
                list(
                    zip(
                        failed["error"].fillna("gateway_error").astype(str),
                        [now] * len(failed),
                        [delivery_id] * len(failed),
                        failed["seq"].astype(int),
                        failed["message_no"].astype(int),
                        strict=True,
                    )
                ),
            )
            conn.execute(
                ledger.insert().values(
                    at=now,
                    kind="refund",
                    amount=len(failed),
                    delivery_id=delivery_id,
                    note="messages the gateway did not accept",
                )
            )
        conn.execute(
            items.update()
            .where(in_chunk, items.c.status == "sending")
            .values(status="sent", sent_at=now)
        )


def _finish(ctx: Context, delivery_id: int, me: str) -> str:
    with write(ctx.engine) as conn:
        counts: dict[str, int] = dict(
            conn.execute(  # type: ignore[arg-type]
                select(items.c.status, func.count())
                .where(items.c.delivery_id == delivery_id)
                .group_by(items.c.status)
            ).all()
        )
        sent, errors = counts.get("sent", 0), counts.get("error", 0)
        status = "sent" if errors == 0 else ("failed" if sent == 0 else "partially_sent")
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id, deliveries.c.claimed_by == me)
            .values(status=status, finished_at=clock.now(), claimed_by=None)
        )
    return status
