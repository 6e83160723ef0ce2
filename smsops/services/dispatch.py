"""Sending a saved delivery (R10, R11): claim it, allocate tickets at send time, send
chunk by chunk through the gateway, record every result.

Crash safety. Each process that sends (a *dispatcher*, ``host:pid:start``) registers
itself with a heartbeat. It takes a chunk by marking its items ``sending`` with itself
as owner (one statement; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), hands the chunk to
the gateway, then records ``sent`` or ``error`` (refunded) in one transaction. A
dispatcher that dies leaves ``sending`` items; whoever continues asks the gateway which
of their idempotency keys it accepted, so nothing is sent twice and nothing is lost.
Tickets are debited once, when the delivery is allocated.

Parallelism. Several dispatchers may work on one large delivery (``join=True``): each
claims different chunks. ``dispatch-due`` never joins a delivery a live dispatcher is
sending; it only resumes abandoned ones.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from sqlalchemy import and_, func, or_, select, text, tuple_

from smsops import clock
from smsops.domain.tickets import SENT, allocate_plan
from smsops.errors import NotFoundError, StateError
from smsops.gateways import Gateway, idempotency_keys
from smsops.services.account import bulk_allowed, get_account, lock_balance
from smsops.services.context import Context
from smsops.services.deliveries import FINAL, Created, delivery_summary
from smsops.services.liveness import live_dispatchers, process_id, register
from smsops.store import read, write
from smsops.store.bulk import execute_many, fetch_frame
from smsops.store.schema import deliveries, dispatchers, items, ledger, optouts

# The gateway may or may not have sent it: never resent, its ticket stays spent.
UNKNOWN = "outcome_unknown"
# R1 at send time: the account went below Standard after a bulk delivery was saved (a
# downgrade); its pairs are not sent, no ticket is spent, and a resend after an upgrade
# repairs them.
PLAN_BELOW_STANDARD = "plan_below_standard"
BULK_KINDS = ("bulk", "resend")  # what R1 gates; individual sends go out on any plan


@dataclass(frozen=True)
class DispatchResult:
    delivery_id: int
    status: str
    sent: int
    errors: int
    tickets_used: int
    resumed: bool
    handled: int = 0  # pairs this dispatcher itself handed to the gateway

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def due_ids(ctx: Context) -> list[int]:
    """Deliveries to send now: scheduled ones whose time has come, queued ones, and ones
    every dispatcher of which died — oldest first."""
    now = clock.now()
    lease = ctx.settings.lease_seconds
    with read(ctx.engine) as conn:
        rows = conn.execute(
            select(deliveries.c.id, deliveries.c.status)
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
        # A queued delivery's creator registers to send it at once, a sending one has its
        # dispatchers: either way it is ours only when none of them lives on.
        return [
            r.id for r in rows if r.status == "scheduled" or not live_dispatchers(conn, r.id, lease)
        ]


def dispatch_due(ctx: Context) -> list[DispatchResult]:
    """Send every delivery that is due, resuming any whose dispatchers died."""
    done = []
    for delivery_id in due_ids(ctx):
        try:
            done.append(dispatch(ctx, delivery_id))
        except StateError:
            continue  # another process took it between the listing and the claim
    return done


@dataclass(frozen=True)
class Session:
    """One dispatcher's work on one delivery, from :func:`begin` to :func:`finish`."""

    delivery_id: int
    owner: str
    resumed: bool
    texts: tuple[str, ...] = ()  # the messages, read once


def dispatch(ctx: Context, delivery_id: int, *, join: bool = False) -> DispatchResult:
    """Send one delivery now (due, queued, or abandoned by dead dispatchers). With
    ``join``, help the dispatchers already sending it, chunk by chunk."""
    gateway = ctx.gateway()  # first: a gateway that cannot be used leaves nothing claimed
    handled = 0
    try:
        session = begin(ctx, delivery_id, join=join)
        total = _left(ctx, delivery_id)
        with keep_alive(ctx, session):
            while n := send_chunk(ctx, session, gateway):
                handled += n
                ctx.progress(min(handled, total), total, "sending")
    finally:
        gateway.close()
    return replace(finish(ctx, session), handled=handled)


def _left(ctx: Context, delivery_id: int) -> int:
    """Funded pairs not sent yet."""
    with read(ctx.engine) as conn:
        return int(
            conn.execute(
                select(func.count()).where(
                    items.c.delivery_id == delivery_id,
                    items.c.status.in_(("pending", "sending")),
                    items.c.ticket.is_(True),
                )
            ).scalar_one()
        )


def send_if_due(ctx: Context, created: Created) -> dict[str, object]:
    """R12: a just-saved delivery without a send time goes out now; a scheduled one waits
    for dispatch-due. Returns the creation result, with the send's outcome when sent."""
    result: dict[str, object] = created.to_dict()
    if created.status != "queued":
        return result
    sent = dispatch(ctx, created.delivery_id)
    return {
        **result,
        "status": sent.status,
        "sent": sent.sent,
        "errors": sent.errors,
        "tickets_used": sent.tickets_used,
    }


def begin(ctx: Context, delivery_id: int, *, join: bool = False) -> Session:
    """Register as a dispatcher of the delivery and allocate its tickets (once, R10)."""
    owner = process_id()
    session = Session(
        delivery_id, owner, _claim(ctx, delivery_id, owner, join), tuple(_texts(ctx, delivery_id))
    )
    _allocate(ctx, delivery_id)
    return session


@contextmanager
def keep_alive(ctx: Context, session: Session) -> Iterator[None]:
    """Show life (a heartbeat) while the body runs, so no one resumes our chunks."""
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ctx, session, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


def send_chunk(ctx: Context, session: Session, gateway: Gateway) -> int:
    """Take and send the next chunk; return how many pairs it held (0: none left).

    First settles items that this dispatcher (a failed attempt, e.g. a retried task) or a
    dead one handed to the gateway without recording the outcome, so a retry never sends
    a message twice.
    """
    _reconcile(ctx, gateway, session.delivery_id, session.owner)
    chunk = _take_chunk(ctx, session)
    if chunk.empty:
        return 0
    _send(ctx, gateway, session, chunk)
    return len(chunk)


def finish(ctx: Context, session: Session) -> DispatchResult:
    """Leave the delivery; the last dispatcher out records its final status."""
    status = _finish(ctx, session)
    s = delivery_summary(ctx, session.delivery_id)
    return DispatchResult(
        session.delivery_id,
        status,
        int(s["sent"]),
        int(s["errors"]),
        int(s["tickets_used"]),
        session.resumed,
    )


def _claim(ctx: Context, delivery_id: int, me: str, join: bool) -> bool:
    """Register this dispatcher; True when continuing work that others left."""
    now = clock.now()
    with write(ctx.engine) as conn:
        row = conn.execute(
            select(deliveries).where(deliveries.c.id == delivery_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"no delivery {delivery_id}")
        if row.status in FINAL:
            raise StateError(f"delivery {delivery_id} is already {row.status}")
        scheduled = clock.from_store(row.scheduled_at)
        if row.status == "scheduled" and scheduled is not None and scheduled > now:
            raise StateError(f"delivery {delivery_id} is scheduled for later")
        others = [
            o for o in live_dispatchers(conn, delivery_id, ctx.settings.lease_seconds) if o != me
        ]
        if others and not join:
            raise StateError(f"delivery {delivery_id} is being sent by {others[0]}")
        resumed = row.status == "sending" and not others
        register(conn, delivery_id, now)
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id)
            .values(status="sending", started_at=row.started_at or now)
        )
    return resumed


def _heartbeat(ctx: Context, session: Session, stop: threading.Event) -> None:
    while not stop.wait(ctx.settings.lease_seconds / 4):
        with write(ctx.engine) as conn:
            conn.execute(
                dispatchers.update()
                .where(dispatchers.c.owner == session.owner)
                .values(heartbeat_at=clock.now())
            )


def _pending(delivery_id: int) -> Any:
    return and_(items.c.delivery_id == delivery_id, items.c.status == "pending")


def _allocate(ctx: Context, delivery_id: int) -> None:
    """R10 at send time: opted-out numbers leave (R16), then the balance is spent over the
    pairs in order (allocate_plan) and debited at once (R11); the rest are errors. A bulk
    delivery of an account no longer on Standard or above sends nothing (R1)."""
    with write(ctx.engine) as conn:
        allocated, kind = conn.execute(
            select(deliveries.c.allocated, deliveries.c.kind)
            .where(deliveries.c.id == delivery_id)
            .with_for_update()
        ).one()
        if allocated:
            return  # started before: it finishes whatever the plan is now
        now = clock.now()
        if kind in BULK_KINDS and not bulk_allowed(get_account(ctx, conn).plan):
            conn.execute(
                items.update()
                .where(_pending(delivery_id))
                .values(status="error", error=PLAN_BELOW_STANDARD, sent_at=now)
            )
            conn.execute(
                deliveries.update().where(deliveries.c.id == delivery_id).values(allocated=True)
            )
            return
        conn.execute(
            items.update()
            .where(_pending(delivery_id), items.c.phone.in_(select(optouts.c.phone)))
            .values(status="error", error="opted_out", sent_at=now)
        )
        balance = lock_balance(conn)
        pairs = fetch_frame(
            conn,
            select(items.c.seq, items.c.message_no)
            .where(_pending(delivery_id))
            .order_by(items.c.seq, items.c.message_no),
            ["seq", "message_no"],
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


def _reconcile(ctx: Context, gateway: Gateway, delivery_id: int, me: str) -> None:
    """Settle items handed to the gateway whose outcome was not recorded — ours from a
    failed attempt, or a dead dispatcher's: sent if the gateway has their key, else
    pending again; if the gateway cannot tell, ``outcome_unknown`` errors rather than
    risk a second send."""
    lease = ctx.settings.lease_seconds
    with read(ctx.engine) as conn:
        rows = conn.execute(
            select(items.c.seq, items.c.message_no, items.c.owner).where(
                items.c.delivery_id == delivery_id, items.c.status == "sending"
            )
        ).all()
        if not rows:
            return
        live = set(live_dispatchers(conn, delivery_id, lease)) - {me}
    stale = [(r.seq, r.message_no) for r in rows if r.owner not in live]
    if not stale:
        return
    accepted = gateway.accepted_keys(delivery_id)
    frame = pd.DataFrame(stale, columns=["seq", "message_no"])
    keys = idempotency_keys(delivery_id, frame["seq"], frame["message_no"])
    now = clock.now()
    done: list[tuple[str, str | None, object, int, int, int]]
    if accepted is None:
        done = [("error", UNKNOWN, now, delivery_id, s, m) for s, m in stale]
    else:
        hit = keys.isin(accepted).to_numpy()
        done = [
            ("sent" if h else "pending", None, now if h else None, delivery_id, s, m)
            for h, (s, m) in zip(hit, stale, strict=True)
        ]
    with write(ctx.engine) as conn:
        execute_many(
            conn,
            "UPDATE delivery_items SET status = ?, error = ?, sent_at = ?, "
            "owner = NULL WHERE delivery_id = ? AND seq = ? AND message_no = ? "
            "AND status = 'sending'",
            done,
        )


def _take_chunk(ctx: Context, session: Session) -> pd.DataFrame:
    """Claim the next funded pending pairs in send order for this dispatcher (one
    statement; concurrent dispatchers skip each other's rows) and return them."""
    d, me = session.delivery_id, session.owner
    with write(ctx.engine) as conn:
        owner = conn.execute(
            select(dispatchers.c.owner).where(
                dispatchers.c.owner == me, dispatchers.c.delivery_id == d
            )
        ).scalar()
        if owner is None:
            raise StateError(f"dispatcher {me} is no longer registered on delivery {d}")
        if conn.dialect.name == "postgresql":
            # The queue idiom: lock the next rows, skipping other workers' ones, and
            # update them by physical address (a TID scan, not a join over the delivery).
            conn.execute(
                text(
                    "UPDATE delivery_items SET status = 'sending', owner = :me "
                    "WHERE ctid = ANY(ARRAY(SELECT ctid FROM delivery_items "
                    "WHERE delivery_id = :d AND status = 'pending' AND ticket "
                    "ORDER BY seq, message_no LIMIT :n FOR UPDATE SKIP LOCKED))"
                ),
                {"me": me, "d": d, "n": ctx.settings.chunk_size},
            )
        else:  # SQLite: one writer at a time, nothing to skip
            nxt = (
                select(items.c.seq, items.c.message_no)
                .where(_pending(d), items.c.ticket.is_(True))
                .order_by(items.c.seq, items.c.message_no)
                .limit(ctx.settings.chunk_size)
            )
            conn.execute(
                items.update()
                .where(items.c.delivery_id == d, tuple_(items.c.seq, items.c.message_no).in_(nxt))
                .values(status="sending", owner=me)
            )
        chunk = fetch_frame(
            conn,
            select(items.c.seq, items.c.message_no, items.c.phone)
            .where(
                items.c.delivery_id == d,
                items.c.status == "sending",
                items.c.owner == me,
            )
            .order_by(items.c.seq, items.c.message_no),
            ["seq", "message_no", "phone"],
        )
        conn.execute(
            dispatchers.update().where(dispatchers.c.owner == me).values(heartbeat_at=clock.now())
        )
    return chunk


def _texts(ctx: Context, delivery_id: int) -> list[str]:
    with read(ctx.engine) as conn:
        return list(
            json.loads(
                conn.execute(
                    select(deliveries.c.messages).where(deliveries.c.id == delivery_id)
                ).scalar_one()
            )
        )


def _send(ctx: Context, gateway: Gateway, session: Session, chunk: pd.DataFrame) -> None:
    d = session.delivery_id
    texts = pd.Series(session.texts, dtype=object)
    batch = pd.DataFrame(
        {
            "delivery_id": d,
            "seq": chunk["seq"],
            "message_no": chunk["message_no"],
            "phone": chunk["phone"],
            "text": texts.iloc[chunk["message_no"] - 1].to_numpy(),
            "idempotency_key": idempotency_keys(d, chunk["seq"], chunk["message_no"]),
        }
    )
    results = gateway.send(batch)
    _record(ctx, session, batch, results)


def _record(ctx: Context, session: Session, batch: pd.DataFrame, results: pd.DataFrame) -> None:
    """One transaction: errors (refunded) first, then the rest of our chunk is sent."""
    d = session.delivery_id
    merged = batch.merge(results, on="idempotency_key", how="left")
    failed = merged[merged["status"] != "sent"]
    now = clock.now()
    with write(ctx.engine) as conn:
        if len(failed):
            execute_many(
                conn,
                "UPDATE delivery_items SET status = 'error', error = ?, sent_at = ?, "
                "owner = NULL WHERE delivery_id = ? AND seq = ? AND message_no = ?",
                list(
                    zip(
                        failed["error"].fillna("gateway_error").astype(str),
                        [now] * len(failed),
                        [d] * len(failed),
                        failed["seq"].astype(int),
                        failed["message_no"].astype(int),
                        strict=True,
                    )
                ),
            )
            # A lost answer (outcome_unknown) may have gone out: its ticket stays spent,
            # as in _reconcile; everything the gateway refused is refunded.
            refunded = int((failed["error"] != UNKNOWN).sum())
            if refunded:
                conn.execute(
                    ledger.insert().values(
                        at=now,
                        kind="refund",
                        amount=refunded,
                        delivery_id=d,
                        note="messages the gateway did not accept",
                    )
                )
        conn.execute(
            items.update()
            .where(
                items.c.delivery_id == d,
                items.c.status == "sending",
                items.c.owner == session.owner,
            )
            .values(status="sent", sent_at=now, owner=None)
        )


def _finish(ctx: Context, session: Session) -> str:
    """Unregister; if no one else is still sending and nothing is left, close it."""
    d = session.delivery_id
    with write(ctx.engine) as conn:
        conn.execute(select(deliveries.c.id).where(deliveries.c.id == d).with_for_update()).one()
        conn.execute(dispatchers.delete().where(dispatchers.c.owner == session.owner))
        counts: dict[str, int] = dict(
            conn.execute(  # type: ignore[arg-type]
                select(items.c.status, func.count())
                .where(items.c.delivery_id == d)
                .group_by(items.c.status)
            ).all()
        )
        unfinished = (
            counts.get("sending", 0)
            + conn.execute(
                select(func.count()).where(_pending(d), items.c.ticket.is_(True))
            ).scalar_one()
        )
        if unfinished:
            return "sending"  # others are still at it (or will resume a dead one's)
        sent, errors = counts.get("sent", 0), counts.get("error", 0)
        status = "sent" if errors == 0 else ("failed" if sent == 0 else "partially_sent")
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == d, deliveries.c.status == "sending")
            .values(status=status, finished_at=clock.now())
        )
    return status
