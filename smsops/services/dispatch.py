"""Sending a saved delivery (R10, R11): claim it, allocate tickets at send time, send
chunk by chunk through the gateway, record every result.

Crash safety. Each process that sends (a *dispatcher*, ``host:pid:start``) registers
itself with a row in ``dispatchers`` and a heartbeat. It takes a chunk by writing a range
of (seq, message_no) on its own row — the next funded pending items that no other live
range holds — so taking a chunk writes no item. Before the gateway puts a group of them
on the wire, one small transaction (the gateway's ``hand_off``) moves two marks on the
row: *handed*, the last item that may be on the wire, and *answered*, the end of the run
of items whose answers have all come back; failures and answers out of order are
recorded on their items then. At the end of the chunk the rest are marked sent with one
range update per run between failures. So an item is written once after it is created,
when its outcome is recorded: allocating tickets writes only the pairs left unfunded (and
the opted-out), and every pair still pending after it is funded. Whoever resumes a dead
dispatcher asks the gateway which idempotency keys it accepted; when it cannot tell, items
up to *answered* were sent, items after *handed* never left (still pending, free for
anyone once the dead row is gone), and only those between — the few in flight — are
``outcome_unknown`` (ticket spent, never resent). Tickets are debited once, when the
delivery is allocated.

Fencing. A dispatcher's lease is judged by the database's clock. Its heartbeat, each
chunk it takes and each hand-off renew the lease only while it has not expired, and a
successor that takes over a dead dispatcher's items deletes its row in the same
transaction: a sender frozen past its lease (SIGSTOP, a VM pause, a clock jump) finds its
claim gone when it wakes and hands over nothing more.

Parallelism. Several dispatchers may work on one large delivery (``join=True``): each
claims a different range (taking one locks the delivery row for a moment, so two takers
never compute the same range). ``dispatch-due`` never joins a delivery a live dispatcher is
sending; it only resumes abandoned ones.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, and_, func, literal_column, or_, select, text, tuple_

from smsops import clock, i18n
from smsops.domain import windows
from smsops.domain.tickets import funded_pairs
from smsops.domain.vocabulary import DeliveryStatus, ItemError, ItemStatus, PauseReason
from smsops.errors import GatewayError, NotFoundError, SmsopsError, StateError
from smsops.gateways import Answer, Gateway, HandOff, idempotency_keys
from smsops.services.account import bulk_allowed, get_account, lock_balance
from smsops.services.context import Context
from smsops.services.deliveries import FINAL, Created, delivery_summary
from smsops.services.liveness import live_dispatchers, process_id, register
from smsops.store import read, write
from smsops.store.bulk import Autocommit, execute_many, execute_one, fetch_tuples
from smsops.store.schema import deliveries, dispatchers, items, ledger, optouts

if TYPE_CHECKING:  # pandas is imported where frames are built: dispatch-due with nothing
    import pandas as pd  # due, and every light command, starts without it

log = logging.getLogger(__name__)

# The gateway may or may not have sent it: never resent, its ticket stays spent.
UNKNOWN = ItemError.OUTCOME_UNKNOWN
# R1 at send time: the account went below Standard after a bulk delivery was saved (a
# downgrade); its pairs are not sent, no ticket is spent, and a resend after an upgrade
# repairs them.
PLAN_BELOW_STANDARD = ItemError.PLAN_BELOW_STANDARD
BULK_KINDS = ("bulk", "resend")  # what R1 gates; individual sends go out on any plan
# The gateway could not be reached (after its own retries): the message never left, so
# it stays pending with its ticket, and the delivery pauses until dispatch-due retries.
UNAVAILABLE = ItemError.GATEWAY_UNAVAILABLE
LONGEST_PAUSE = 3600.0  # seconds


@dataclass(frozen=True)
class DispatchResult:
    delivery_id: int
    status: str
    sent: int
    errors: int
    tickets_used: int
    resumed: bool
    handled: int = 0  # pairs this dispatcher itself handed to the gateway
    reason: str | None = None  # why it is paused (the gateway was down), when it is
    paused_for: str | None = None  # PauseReason: the gateway, or the sending window

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def due_ids(ctx: Context) -> list[int]:
    """Deliveries to send now: scheduled ones whose time has come, queued ones, and ones
    every dispatcher of which died — oldest first."""
    now = ctx.clock()
    lease = ctx.settings.lease_seconds
    with read(ctx.engine) as conn:
        rows = conn.execute(
            select(deliveries.c.id, deliveries.c.status)
            .where(
                or_(
                    and_(
                        deliveries.c.status == DeliveryStatus.SCHEDULED,
                        deliveries.c.scheduled_at <= now,
                    ),
                    and_(
                        deliveries.c.status == DeliveryStatus.PAUSED,
                        deliveries.c.resume_at <= now,
                    ),
                    deliveries.c.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.SENDING)),
                )
            )
            .order_by(
                func.coalesce(deliveries.c.scheduled_at, deliveries.c.created_at), deliveries.c.id
            )
        ).all()
        # A queued delivery's creator registers to send it at once, a sending one has its
        # dispatchers: either way it is ours only when none of them lives on.
        return [
            r.id
            for r in rows
            if r.status in (DeliveryStatus.SCHEDULED, DeliveryStatus.PAUSED)
            or not live_dispatchers(conn, r.id, lease)
        ]


def dispatch_due(ctx: Context) -> list[DispatchResult]:
    """Send every delivery that is due, resuming any whose dispatchers died."""
    done = []
    for delivery_id in due_ids(ctx):
        try:
            result = dispatch(ctx, delivery_id)
        except StateError:
            continue  # another process took it between the listing and the claim
        done.append(result)
        if result.paused_for == PauseReason.GATEWAY_DOWN:
            break  # the gateway is down: no use knocking with every other delivery too
    return done


@dataclass(frozen=True)
class Claim:
    """A dispatcher's claim on one delivery, from :func:`begin` to :func:`finish`: who holds
    it and what it sends (not a database session; the claim holds while its lease does)."""

    delivery_id: int
    owner: str
    resumed: bool
    texts: tuple[str, ...] = ()  # the messages, read once
    # the account's sending window (#11) and zone, read once; none for a delivery made
    # outside it on purpose
    window: str | None = None
    timezone: str = "UTC"


def dispatch(ctx: Context, delivery_id: int, *, join: bool = False) -> DispatchResult:
    """Send one delivery now (due, queued, or abandoned by dead dispatchers). With
    ``join``, help the dispatchers already sending it, chunk by chunk."""
    gateway = ctx.gateway()  # first: a gateway that cannot be used leaves nothing claimed
    try:
        claim = begin(ctx, delivery_id, join=join)
        handled = drive(ctx, claim, lambda s: send_chunk(ctx, s, gateway))
    finally:
        gateway.close()
    return replace(finish(ctx, claim), handled=handled)


def drive(ctx: Context, claim: Claim, send: Callable[[Claim], int]) -> int:
    """The chunk loop, between :func:`begin` and :func:`finish`: ``send`` one chunk after
    another (:func:`send_chunk`, or a flow's task around it) until it hands none, the
    claim kept alive meanwhile; returns the pairs handled. The only one: the CLI, the
    notebooks and the flows all send through it."""
    total = _left(ctx, claim.delivery_id)
    handled = 0
    with keep_alive(ctx, claim):
        while n := send(claim):
            handled += n
            ctx.progress(min(handled, total), total, "sending")
    return handled


def _left(ctx: Context, delivery_id: int) -> int:
    """Funded pairs not sent yet."""
    with read(ctx.engine) as conn:
        return int(conn.execute(select(func.count()).where(_pending(delivery_id))).scalar_one())


@dataclass(frozen=True)
class Saved:
    """A just-saved delivery (:class:`Created`) and, when it went out at once (R12), how
    its send ended; ``sent`` is None for one that waits for its time."""

    delivery_id: int
    status: str  # DeliveryStatus: the send's when sent, else the creation's
    recipients: int
    messages: int
    tickets_needed: int
    scheduled_at: str | None  # ISO 8601 in the account's zone; None = now
    sent: int | None = None
    errors: int | None = None
    tickets_used: int | None = None
    reason: str | None = None  # why it is paused, when it is

    def to_dict(self) -> dict[str, object]:
        """The --json document of ``bulk create``, ``send`` and ``resend``."""
        out: dict[str, object] = {
            "delivery_id": self.delivery_id,
            "status": self.status,
            "recipients": self.recipients,
            "messages": self.messages,
            "tickets_needed": self.tickets_needed,
            "scheduled_at": self.scheduled_at,
        }
        if self.sent is not None:
            out |= {"sent": self.sent, "errors": self.errors, "tickets_used": self.tickets_used}
        if self.reason:
            out["reason"] = self.reason
        return out

    def describe(self) -> str:
        """One line for a person: ``delivery 3: sent, 10 recipients × 2 messages; sent 20,
        errors 0, tickets used 20``."""
        n = i18n.number
        text = i18n._(
            "delivery {id}: {status}, {recipients} recipients × {messages} messages"
        ).format(
            id=self.delivery_id,
            status=self.status,
            recipients=n(self.recipients),
            messages=self.messages,
        )
        if self.scheduled_at:
            text += i18n._(", scheduled for {at}").format(at=i18n.local_time(self.scheduled_at))
        if self.sent is not None:
            text += i18n._("; sent {sent}, errors {errors}, tickets used {used}").format(
                sent=n(self.sent), errors=n(self.errors), used=n(self.tickets_used)
            )
        if self.reason:
            text += i18n._("; paused: {reason}").format(reason=self.reason)
        return text


def send_if_due(ctx: Context, created: Created) -> Saved:
    """R12: a just-saved delivery without a send time goes out now; a scheduled one waits
    for dispatch-due. Returns the creation result, with the send's outcome when sent."""
    saved = Saved(**created.to_dict())
    if not created.sends_now:
        return saved
    sent = dispatch(ctx, created.delivery_id)
    return replace(
        saved,
        status=sent.status,
        sent=sent.sent,
        errors=sent.errors,
        tickets_used=sent.tickets_used,
        reason=sent.reason,
    )


def begin(ctx: Context, delivery_id: int, *, join: bool = False) -> Claim:
    """Register as a dispatcher of the delivery and allocate its tickets (once, R10)."""
    owner = process_id()
    _settle_leftover(ctx, owner)
    resumed = _claim(ctx, delivery_id, owner, join=join)
    texts, outside_window = _texts(ctx, delivery_id)
    acct = get_account(ctx)
    window = None if outside_window else acct.window
    claim = Claim(delivery_id, owner, resumed, tuple(texts), window, acct.timezone)
    _allocate(ctx, delivery_id)
    return claim


def _settle_leftover(ctx: Context, me: str) -> None:
    """A chunk this process claimed earlier and never settled (it lost its claim, or the
    store went away mid-chunk) is settled before the process registers again — its row
    is replaced then, and with it the record of what may have gone."""
    with read(ctx.engine) as conn:
        left = conn.execute(
            select(dispatchers.c.delivery_id).where(
                dispatchers.c.owner == me, dispatchers.c.from_seq.is_not(None)
            )
        ).scalar()
    if left is None:
        return
    gateway = ctx.gateway()
    try:
        _reconcile(ctx, gateway, left, me, own=True)
    finally:
        gateway.close()


@contextmanager
def keep_alive(ctx: Context, claim: Claim) -> Iterator[None]:
    """Show life (a heartbeat) while the body runs, so no one resumes our chunks."""
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ctx, claim, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


def send_chunk(ctx: Context, claim: Claim, gateway: Gateway) -> int:
    """Take and send the next chunk; return how many pairs it held (0: none left).

    First settles items that this dispatcher (a failed attempt, e.g. a retried task) or a
    dead one handed to the gateway without recording the outcome, so a retry never sends
    a message twice. A gateway that fails as a whole (a full disk) or a claim lost to a
    successor stops the send: what was not handed over stays pending for dispatch-due.
    """
    _reconcile(ctx, gateway, claim.delivery_id, claim.owner)
    # the sending window (#11): a chunk no longer than what leaves before it closes (at
    # the rate cap), and none while it is shut — the delivery pauses until it opens
    window = windows.Window.parse_stored(claim.window)
    room = windows.room(ctx.clock(), rate=ctx.settings.rate_limit, window=window, tz=claim.timezone)
    if room == 0 and window is not None:
        _pause_for_window(ctx, claim, window)
        return 0
    chunk = _take_chunk(ctx, claim, gateway.record, limit=room)
    if chunk.empty:
        return 0
    try:
        unavailable = _send(ctx, gateway, claim, chunk)
    except GatewayError:
        _let_go(ctx, gateway, claim)
        raise
    except StateError:  # our lease passed: the chunk is for a successor to settle
        raise
    if unavailable:
        _pause(ctx, claim, unavailable)
        return 0  # nothing more now: dispatch-due resumes it
    return len(chunk)


def _pause(ctx: Context, claim: Claim, unavailable: int) -> None:
    """The gateway was down: the delivery pauses (its unsent pairs pending, their tickets
    kept) and dispatch-due tries again after a pause that doubles each time."""
    with write(ctx.engine) as conn:
        pauses = conn.execute(
            select(deliveries.c.pauses).where(deliveries.c.id == claim.delivery_id)
        ).scalar_one()
        wait = min(ctx.settings.pause_seconds * 2 ** (pauses or 0), LONGEST_PAUSE)
        now = ctx.clock()
        reason = (
            f"the gateway could not be reached ({unavailable:,} messages not handed over); "
            f"trying again from {clock.local_iso(now + timedelta(seconds=wait), 'UTC')}"
        )
        _paused(
            conn,
            claim,
            PauseReason.GATEWAY_DOWN,
            reason=reason,
            resume_at=now + timedelta(seconds=wait),
            pauses=(pauses or 0) + 1,
        )


def _pause_for_window(ctx: Context, claim: Claim, window: windows.Window) -> None:
    """The sending window closed (#11): the delivery pauses — its unsent pairs pending,
    their tickets kept — and dispatch-due resumes it when the window next opens."""
    now, tz = ctx.clock(), claim.timezone
    opens = window.next_opening(now, tz)
    reason = (
        f"the sending window {window} ({tz}) closed; "
        f"{_left(ctx, claim.delivery_id):,} messages wait until it opens at "
        f"{clock.local_iso(opens, tz)}"
    )
    with write(ctx.engine) as conn:
        _paused(conn, claim, PauseReason.WINDOW_CLOSED, reason=reason, resume_at=opens)


def _paused(
    conn: Any,
    claim: Claim,
    why: PauseReason,
    *,
    reason: str,
    resume_at: Any,
    pauses: int | None = None,
) -> None:
    """Record the pause (while the delivery is still sending) and leave it."""
    conn.execute(
        deliveries.update()
        .where(
            deliveries.c.id == claim.delivery_id,
            deliveries.c.status == DeliveryStatus.SENDING,
        )
        .values(
            status=DeliveryStatus.PAUSED,
            paused_for=why,
            paused_reason=reason[:256],
            resume_at=resume_at,
            **({} if pauses is None else {"pauses": pauses}),
        )
    )
    conn.execute(dispatchers.delete().where(dispatchers.c.owner == claim.owner))
    log.warning("delivery %s paused: %s", claim.delivery_id, reason)


def _let_go(ctx: Context, gateway: Gateway, claim: Claim) -> None:
    """After the gateway failed as a whole: settle what it took (when it can tell), put
    the rest back, and leave the delivery so that dispatch-due resumes it at once."""
    try:
        _reconcile(ctx, gateway, claim.delivery_id, claim.owner, own=True)
        _unregister(ctx, claim)
    except SmsopsError as exc:  # the store is gone too: the next resume settles it all
        log.warning("could not let go of delivery %s: %s", claim.delivery_id, exc)


def _unregister(ctx: Context, claim: Claim) -> None:
    with write(ctx.engine) as conn:
        conn.execute(dispatchers.delete().where(dispatchers.c.owner == claim.owner))


def finish(ctx: Context, claim: Claim) -> DispatchResult:
    """Leave the delivery; the last dispatcher out records its final status."""
    status = _finish(ctx, claim)
    s = delivery_summary(ctx, claim.delivery_id)
    reason = paused_for = None
    if status == DeliveryStatus.PAUSED:
        with read(ctx.engine) as conn:
            reason, paused_for = conn.execute(
                select(deliveries.c.paused_reason, deliveries.c.paused_for).where(
                    deliveries.c.id == claim.delivery_id
                )
            ).one()
    return DispatchResult(
        claim.delivery_id,
        status,
        s.sent,
        s.errors,
        s.tickets_used,
        claim.resumed,
        reason=reason,
        paused_for=paused_for or (PauseReason.GATEWAY_DOWN if reason else None),
    )


def _claim(ctx: Context, delivery_id: int, me: str, *, join: bool) -> bool:
    """Register this dispatcher; True when continuing work that others left."""
    now = ctx.clock()
    with write(ctx.engine) as conn:
        row = conn.execute(
            select(deliveries).where(deliveries.c.id == delivery_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"no delivery {delivery_id}")
        if row.status in FINAL:
            raise StateError(f"delivery {delivery_id} is already {row.status}")
        scheduled = clock.from_store(row.scheduled_at)
        if row.status == DeliveryStatus.SCHEDULED and scheduled is not None and scheduled > now:
            raise StateError(f"delivery {delivery_id} is scheduled for later")
        others = [
            o for o in live_dispatchers(conn, delivery_id, ctx.settings.lease_seconds) if o != me
        ]
        if others and not join:
            raise StateError(f"delivery {delivery_id} is being sent by {others[0]}")
        resumed = row.status == DeliveryStatus.SENDING and not others
        register(conn, delivery_id)
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id)
            .values(
                status=DeliveryStatus.SENDING,
                started_at=row.started_at or now,
                paused_reason=None,
                paused_for=None,
                resume_at=None,
            )
        )
    return resumed or row.status == DeliveryStatus.PAUSED


def _heartbeat(ctx: Context, claim: Claim, stop: threading.Event) -> None:
    """Renew the lease a quarter of it at a time. A failed renewal (the database is
    away for a moment) is tried again at the next beat; a lease that has expired is never
    renewed — it may already be another's — so the hand-offs find it gone and stop."""
    while not stop.wait(ctx.settings.lease_seconds / 4):
        try:
            if not _renew(ctx, claim):
                return
        except SmsopsError as exc:
            log.warning("heartbeat of %s failed, trying again: %s", claim.owner, exc)


def _renew(ctx: Context, claim: Claim) -> bool:
    """Extend this dispatcher's lease if it has not expired, by the database's clock;
    False when it has (or the row is gone: fenced)."""
    with write(ctx.engine) as conn:
        return _renew_in(conn, ctx, claim)


Pair = tuple[int, int]  # (seq, message_no): an item's place in the send order
Mark = Pair | None  # a pair of the current chunk, or none yet
_STILL_PENDING = f"status = '{ItemStatus.PENDING}'"  # SQL: an item nobody settled
_NO_CHUNK = (
    "handed_seq = NULL, handed_message_no = NULL, answered_seq = NULL, "
    "answered_message_no = NULL, from_seq = NULL, from_message_no = NULL, to_seq = NULL, "
    "to_message_no = NULL"
)


def _renew_in(
    conn: Any, ctx: Context, claim: Claim, *, marks: tuple[Mark, Mark] | bool = False
) -> bool:
    """:func:`_renew` inside a transaction; ``marks``: the (handed, answered) marks to
    record (True clears them and the claimed range, False leaves them)."""
    return execute_one(conn, *_renewal(conn.dialect.name, ctx, claim, marks=marks)) == 1


def _renewal(
    dialect: str, ctx: Context, claim: Claim, *, marks: tuple[Mark, Mark] | bool
) -> tuple[str, tuple[object, ...]]:
    """The one statement (``?`` placeholders) that renews our lease while it has not
    expired, judged by the database's clock: PostgreSQL's, read in the statement itself
    (no round trip of its own); an SQLite file has no server, and every process using it
    runs on this host (see :func:`~smsops.services.liveness.db_now`). Plain SQL: it runs
    every few messages."""
    lease = ctx.settings.lease_seconds
    if dialect == "postgresql":
        now_sql, expired_sql = "clock_timestamp()", "clock_timestamp() - make_interval(secs => ?)"
        now_row: tuple[object, ...] = ()
        expired_row: tuple[object, ...] = (float(lease),)
    else:
        now = clock.now()
        now_sql, expired_sql = "?", "?"
        now_row, expired_row = (now,), (now - timedelta(seconds=lease),)
    sets = f"heartbeat_at = {now_sql}"
    set_row: tuple[object, ...] = now_row
    if marks is True:
        sets += f", {_NO_CHUNK}"
    elif marks is not False:
        handed, answered = marks
        sets += ", handed_seq = ?, handed_message_no = ?, answered_seq = ?, answered_message_no = ?"
        set_row += (*(handed or (None, None)), *(answered or (None, None)))
    sql = (
        f"UPDATE dispatchers SET {sets} "
        f"WHERE owner = ? AND delivery_id = ? AND heartbeat_at > {expired_sql}"
    )
    return sql, (*set_row, claim.owner, claim.delivery_id, *expired_row)


def _lost(claim: Claim) -> StateError:
    return StateError(
        f"dispatcher {claim.owner} lost its claim on delivery {claim.delivery_id} "
        "(its lease passed, e.g. the process was paused): it stopped sending; "
        "`smsops dispatch-due` finishes the delivery"
    )


def _pending(delivery_id: int) -> Any:
    # the status as a literal, not a bound value: so the planner matches the partial index
    # ix_items_pending (PostgreSQL's generic plans, too)
    return and_(items.c.delivery_id == delivery_id, items.c.status == _PENDING_LITERAL)


_PENDING_LITERAL = literal_column(f"'{ItemStatus.PENDING.value}'", String())


def _allocate(ctx: Context, delivery_id: int) -> None:
    """R10 at send time: opted-out numbers leave (R16), then the balance is spent over the
    pairs in order (funded_pairs) and debited at once (R11); the rest are errors. A bulk
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
                .values(status=ItemStatus.ERROR, error=PLAN_BELOW_STANDARD, sent_at=now)
            )
            conn.execute(
                deliveries.update().where(deliveries.c.id == delivery_id).values(allocated=True)
            )
            return
        conn.execute(
            items.update()
            .where(_pending(delivery_id), items.c.phone.in_(select(optouts.c.phone)))
            .values(status=ItemStatus.ERROR, error=ItemError.OPTED_OUT, sent_at=now)
        )
        balance = lock_balance(conn)
        # R10: the first pairs in send order are funded, the rest are not — counted and
        # bounded in the store, the pairs never read out (1.5M of them at 1M users)
        pending = select(items.c.seq, items.c.message_no).where(_pending(delivery_id))
        total = conn.execute(select(func.count()).select_from(pending.subquery())).scalar_one()
        funded = funded_pairs(total, balance)
        if funded:
            conn.execute(
                ledger.insert().values(
                    at=now, kind="debit", amount=-funded, delivery_id=delivery_id
                )
            )
        if funded < total:  # the pairs after the last funded one: no ticket left
            unfunded = items.update().where(_pending(delivery_id))
            if funded:
                last = conn.execute(
                    pending.order_by(items.c.seq, items.c.message_no).offset(funded - 1).limit(1)
                ).one()
                unfunded = unfunded.where(
                    tuple_(items.c.seq, items.c.message_no) > tuple_(last.seq, last.message_no)
                )
            conn.execute(
                unfunded.values(
                    status=ItemStatus.ERROR, error=ItemError.INSUFFICIENT_TICKETS, sent_at=now
                )
            )
        # Every pair still pending is funded now: its ticket is marked when it is settled
        # (sent, or outcome_unknown), in the one write that records its outcome.
        conn.execute(
            deliveries.update().where(deliveries.c.id == delivery_id).values(allocated=True)
        )


def _reconcile(
    ctx: Context, gateway: Gateway, delivery_id: int, me: str, *, own: bool = False
) -> None:
    """Settle the chunks that dispatchers claimed and did not settle — ours from a failed
    attempt (``own``: only ours), or a dead dispatcher's: its pending items the gateway
    has the key of were sent, the rest stay pending. When the gateway cannot tell (Kannel,
    or a chunk sent through another machine's outbox), its marks decide (see
    :func:`_fates`): nothing after its hand-off mark is written off.
    A dead dispatcher's row is deleted in the same transaction — its range is free for
    anyone, and if it wakes up it finds its claim gone (fencing)."""
    import pandas as pd

    lease = ctx.settings.lease_seconds
    with read(ctx.engine) as conn:
        claims = conn.execute(
            select(dispatchers).where(
                dispatchers.c.delivery_id == delivery_id,
                dispatchers.c.from_seq.is_not(None),
                *([dispatchers.c.owner == me] if own else []),
            )
        ).all()
        if not claims:
            return
        live = set(live_dispatchers(conn, delivery_id, lease)) - {me}
        stale = {c.owner: c for c in claims if c.owner not in live}
        if not stale:
            return
        rows = [
            (r.seq, r.message_no, r.error, c.owner)
            for c in stale.values()
            for r in conn.execute(
                select(items.c.seq, items.c.message_no, items.c.error).where(
                    _pending(delivery_id), _claimed_by(c)
                )
            )
        ]
    left = pd.DataFrame(rows, columns=["seq", "message_no", "error", "owner"])
    left["fate"] = _fates(left, stale)
    # the gateway can tell only of chunks sent through its own record (this machine's
    # outbox, not another's): for those its answer replaces the marks' judgement
    ours = [o for o, c in stale.items() if gateway.record and c.gateway_record == gateway.record]
    accepted = gateway.accepted_keys(delivery_id) if ours else None
    if accepted is not None:
        told = left["owner"].isin(ours)
        keys = idempotency_keys(delivery_id, left.loc[told, "seq"], left.loc[told, "message_no"])
        left.loc[told, "fate"] = (
            keys.isin(accepted).map({True: ItemStatus.SENT, False: ItemStatus.PENDING}).to_numpy()
        )
    now = clock.now()
    with write(ctx.engine) as conn:
        for owner, claim in stale.items():
            if owner == me:  # ours: let go of the range, unless someone settled it already
                gone = conn.execute(
                    text(
                        f"UPDATE dispatchers SET {_NO_CHUNK} "
                        "WHERE owner = :o AND from_seq IS NOT NULL"
                    ),
                    {"o": owner},
                ).rowcount
            else:  # fence the dead one, unless it renewed since we looked
                gone = conn.execute(
                    dispatchers.delete().where(
                        dispatchers.c.owner == owner,
                        dispatchers.c.heartbeat_at == claim.heartbeat_at,
                    )
                ).rowcount
            if not gone:
                left = left[left["owner"] != owner]  # alive after all: its items are its own
        settled = left[left["fate"] != ItemStatus.PENDING]
        execute_many(
            conn,
            "UPDATE delivery_items SET status = ?, error = ?, sent_at = ?, ticket = TRUE "
            f"WHERE delivery_id = ? AND seq = ? AND message_no = ? AND {_STILL_PENDING}",
            [
                (ItemStatus.SENT, None, now, delivery_id, int(sq), int(m))
                if fate == ItemStatus.SENT
                else (ItemStatus.ERROR, UNKNOWN, now, delivery_id, int(sq), int(m))
                for sq, m, fate in zip(
                    settled["seq"], settled["message_no"], settled["fate"], strict=True
                )
            ],
        )


def _claimed_by(claim: Any) -> Any:
    """The items inside a dispatcher row's claimed range."""
    return _between((claim.from_seq, claim.from_message_no), (claim.to_seq, claim.to_message_no))


def _between(lo: Pair, hi: Pair) -> Any:
    pair = tuple_(items.c.seq, items.c.message_no)
    return and_(pair >= tuple_(*lo), pair <= tuple_(*hi))


def _fates(left: pd.DataFrame, marks: dict[str, Any]) -> pd.Series:
    """What became of the pending items (seq, message_no, error, owner) of chunks left
    unsettled, when the gateway cannot tell, by their dispatcher's marks: ``sent`` (its
    answer came back: at or before the answered mark), ``pending`` (never handed over:
    after the handed mark, or answered that the gateway could not be reached), else
    ``outcome_unknown``. Without marks to read, an item may have gone.

    >>> import pandas as pd
    >>> class Mark:  # a dispatcher's row: answered up to (1, 2), handed up to (3, 1)
    ...     answered_seq, answered_message_no, handed_seq, handed_message_no = 1, 2, 3, 1
    >>> left = pd.DataFrame({"seq": [1, 2, 3, 3], "message_no": [2, 1, 1, 2], "owner": "a"})
    >>> _fates(left.assign(error=None), {"a": Mark()}).astype(str).tolist()
    ['sent', 'outcome_unknown', 'outcome_unknown', 'pending']
    """
    import pandas as pd

    position = left["seq"].to_numpy() * 4 + left["message_no"].to_numpy()
    fates = pd.Series(UNKNOWN, index=left.index, dtype=object)
    for owner, mark in marks.items():  # the dead dispatchers: a few at most
        mine = (left["owner"] == owner).to_numpy()
        if mark.handed_seq is None:
            fates[mine] = ItemStatus.PENDING
            continue
        fates[mine & (position > mark.handed_seq * 4 + mark.handed_message_no)] = ItemStatus.PENDING
        if mark.answered_seq is not None:
            answered = position <= mark.answered_seq * 4 + mark.answered_message_no
            fates[mine & answered] = ItemStatus.SENT
    fates[(left["error"] == UNAVAILABLE).to_numpy()] = ItemStatus.PENDING  # it never left
    return fates


def _take_chunk(
    ctx: Context, claim: Claim, record: str | None, *, limit: int | None = None
) -> pd.DataFrame:
    """Claim the next funded pending pairs in send order (at most a chunk, and at most
    ``limit``) that no other dispatcher's range holds — as a range on our own row, writing
    no item, with the ``record`` of the gateway it goes through — and return them."""

    d, me = claim.delivery_id, claim.owner
    with write(ctx.engine) as conn:
        # the claim still holds (renewed; nothing of a chunk handed over, no range)
        if not _renew_in(conn, ctx, claim, marks=True):
            raise _lost(claim)
        # one taker at a time per delivery (SQLite: the write transaction already is)
        conn.execute(select(deliveries.c.id).where(deliveries.c.id == d).with_for_update())
        taken = sorted(
            ((c.from_seq, c.from_message_no), (c.to_seq, c.to_message_no))
            for c in conn.execute(
                select(dispatchers).where(
                    dispatchers.c.delivery_id == d,
                    dispatchers.c.owner != me,
                    dispatchers.c.from_seq.is_not(None),
                )
            )
        )
        size = ctx.settings.chunk_size if limit is None else min(limit, ctx.settings.chunk_size)
        rows = _free_run(conn, d, taken, n=size)
        if not rows:
            return _chunk_frame(rows)
        lo, hi = (rows[0][0], rows[0][1]), (rows[-1][0], rows[-1][1])
        conn.execute(
            dispatchers.update()
            .where(dispatchers.c.owner == me)
            .values(
                from_seq=lo[0],
                from_message_no=lo[1],
                to_seq=hi[0],
                to_message_no=hi[1],
                gateway_record=record,
            )
        )
        # R16 during a send: a number that opted out since the delivery was allocated
        # (a 停止 reply to its first chunks, say) gets nothing more; its ticket comes back
        opted_out = conn.execute(
            items.update()
            .where(
                _pending(d),
                _between(lo, hi),
                items.c.phone.in_(select(optouts.c.phone)),
            )
            .values(status=ItemStatus.ERROR, error=ItemError.OPTED_OUT, sent_at=clock.now())
        ).rowcount
        if opted_out:
            conn.execute(
                ledger.insert().values(
                    at=clock.now(),
                    kind="refund",
                    amount=opted_out,
                    delivery_id=d,
                    note="opted out while the delivery was being sent (R16)",
                )
            )
            rows = fetch_tuples(conn, _funded(d).where(_between(lo, hi)))
    return _chunk_frame(rows)


def _chunk_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """(seq, message_no, phone) rows as a chunk: numbers as int64, the phones as Python
    strings (object dtype), which the gateways hand on as they are."""
    import numpy as np
    import pandas as pd

    seq, message_no, phone = zip(*rows, strict=True) if rows else ((), (), ())
    return pd.DataFrame(
        {
            "seq": np.array(seq, dtype=np.int64),
            "message_no": np.array(message_no, dtype=np.int64),
            "phone": pd.Series(phone, dtype=object),
        }
    )


def _funded(d: int) -> Any:
    return (
        select(items.c.seq, items.c.message_no, items.c.phone)
        .where(_pending(d))
        .order_by(items.c.seq, items.c.message_no)
    )


def _free_run(
    conn: Any, d: int, taken: list[tuple[Pair, Pair]], *, n: int
) -> list[tuple[Any, ...]]:
    """Up to ``n`` funded pending items in send order from the first that lies in none of
    the ``taken`` ranges (sorted), stopping short of the next taken range."""
    after: Pair | None = None
    while True:
        stmt = _funded(d).limit(1)
        if after is not None:
            stmt = stmt.where(tuple_(items.c.seq, items.c.message_no) > tuple_(*after))
        first = conn.execute(stmt).first()
        if first is None:
            return []
        start = (first.seq, first.message_no)
        inside = next((hi for lo, hi in taken if lo <= start <= hi), None)
        if inside is None:
            break
        after = inside
    stmt = _funded(d).where(tuple_(items.c.seq, items.c.message_no) >= tuple_(*start))
    bound = next((lo for lo, _ in taken if lo > start), None)
    if bound is not None:
        stmt = stmt.where(tuple_(items.c.seq, items.c.message_no) < tuple_(*bound))
    return fetch_tuples(conn, stmt.limit(n))


def _texts(ctx: Context, delivery_id: int) -> tuple[list[str], bool]:
    """The delivery's messages, and whether it goes outside the sending window (#11)."""
    with read(ctx.engine) as conn:
        messages, outside = conn.execute(
            select(deliveries.c.messages, deliveries.c.outside_window).where(
                deliveries.c.id == delivery_id
            )
        ).one()
    return list(json.loads(messages)), bool(outside)


def _send(ctx: Context, gateway: Gateway, claim: Claim, chunk: pd.DataFrame) -> int:
    """Hand the chunk to the gateway and record every answer; return how many pairs the
    gateway could not take because it was down (they stay pending)."""
    import numpy as np
    import pandas as pd

    d = claim.delivery_id
    keys = idempotency_keys(d, chunk["seq"], chunk["message_no"])
    texts = np.asarray(claim.texts, dtype=object)[chunk["message_no"].to_numpy() - 1]
    batch = pd.DataFrame(
        {
            "delivery_id": d,
            "seq": chunk["seq"],
            "message_no": chunk["message_no"],
            "phone": chunk["phone"],
            "text": pd.Series(texts, index=chunk.index, dtype=object),
            "idempotency_key": keys,
        }
    )
    handed = _Handed(chunk["seq"].tolist(), chunk["message_no"].tolist(), keys.tolist())
    recorded: set[str] = set()  # answers the hand-offs recorded one by one already
    marks = Autocommit(ctx.engine)  # the hand-offs' connection, kept for the chunk
    try:
        hand_off = _hand_off(ctx, claim, handed=handed, recorded=recorded, marks=marks)
        results = gateway.send(batch, hand_off)
    finally:
        marks.close()
    failed = results[results["status"] != ItemStatus.SENT]
    answers = [
        (key, status, error if isinstance(error, str) else None)
        for key, status, error in zip(
            failed["idempotency_key"], failed["status"], failed["error"], strict=True
        )
        if key not in recorded
    ]
    with write(ctx.engine) as conn:
        # our lease renewed, or at least our row still there: no successor has settled
        # the chunk (taking it over deletes the row)
        if _renew_in(conn, ctx, claim) or _holds(conn, claim):
            _settle(conn, claim, _located(answers, handed))
            now = clock.now()
            failures = {handed.position[k] for k in failed["idempotency_key"]}
            execute_many(  # every other item of the chunk was sent
                conn,
                f"UPDATE delivery_items SET status = '{ItemStatus.SENT}', error = NULL, "
                f"sent_at = ?, ticket = TRUE WHERE delivery_id = ? AND {_STILL_PENDING} "
                "AND (seq, message_no) >= (?, ?) AND (seq, message_no) <= (?, ?)",
                [
                    (now, d, *handed.pair(first), *handed.pair(last))
                    for first, last in _runs(len(handed), failures)
                ],
            )
            conn.execute(
                text(f"UPDATE dispatchers SET {_NO_CHUNK} WHERE owner = :o"), {"o": claim.owner}
            )
    return int((results["error"] == UNAVAILABLE).sum())


@dataclass
class _Handed:
    """A chunk as its items go to the gateway, in send order: their (seq, message_no) and
    idempotency keys. The lookup of an answer's key is built only when an answer needs it
    (a chunk that all went out at once needs none)."""

    seq: list[int]
    message_no: list[int]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def pair(self, i: int) -> Pair:
        return self.seq[i], self.message_no[i]

    @cached_property
    def position(self) -> dict[str, int]:
        """Each key's place in the chunk."""
        return {key: i for i, key in enumerate(self.keys)}

    def where(self, key: str) -> Pair:
        return self.pair(self.position[key])


def _runs(n: int, failed: set[int]) -> list[tuple[int, int]]:
    """The stretches of places ``0..n-1`` (send order) between the ``failed`` ones, as
    (first, last).

    >>> _runs(5, {2})
    [(0, 1), (3, 4)]
    >>> _runs(4, {0, 1}), _runs(3, set()), _runs(2, {0, 1})
    ([(2, 3)], [(0, 2)], [])
    """
    runs: list[tuple[int, int]] = []
    start = 0
    for i in sorted(failed):
        if i > start:
            runs.append((start, i - 1))
        start = i + 1
    if start < n:
        runs.append((start, n - 1))
    return runs


def _holds(conn: Any, claim: Claim) -> bool:
    """Is our row (with its claimed range) still there? Locks it: a successor that would
    take our chunk over waits until we have settled it."""
    return (
        conn.execute(
            select(dispatchers.c.owner)
            .where(dispatchers.c.owner == claim.owner, dispatchers.c.from_seq.is_not(None))
            .with_for_update()
        ).first()
        is not None
    )


Located = tuple[int, int, str, str | None]  # seq, message_no, status, error


def _located(answers: list[Answer], handed: _Handed) -> list[Located]:
    """The gateway's answers by item, with a failure's reason never empty."""
    return [
        (
            *handed.where(key),
            status,
            None if status == ItemStatus.SENT else (error or ItemError.GATEWAY_ERROR),
        )
        for key, status, error in answers
    ]


def _hand_off(
    ctx: Context,
    claim: Claim,
    *,
    handed: _Handed,
    recorded: set[str],
    marks: Autocommit,
) -> HandOff:
    """What the gateway calls before each group goes on the wire (every few messages):
    check the claim still holds, move the *handed* mark to the last item of the group and
    the *answered* mark to the end of the run of items whose answers have all come back,
    and record the answers that do not extend that run one by one — failures, and answers
    that came back out of order (a few: the requests in flight). So only the items in
    flight or about to go are ever in doubt, and most items are written once only, at the
    end of the chunk (those still pending were sent). Moving the marks alone is one
    statement on ``marks``' kept connection; with answers to record, one transaction."""
    back = bytearray(len(handed))  # 1: its answer came back
    run = 0  # items 0..run-1 all answered

    def hand_off(upto: int, answered: list[Answer]) -> None:
        nonlocal run
        position = handed.position if answered else {}
        for answer in answered:
            back[position[answer[0]]] = 1
        while run < len(back) and back[run]:
            run += 1
        one_by_one = [a for a in answered if a[1] != ItemStatus.SENT or position[a[0]] >= run]
        moved = (handed.pair(upto - 1), handed.pair(run - 1) if run else None)
        if not one_by_one:
            if marks.execute(*_renewal(marks.dialect, ctx, claim, marks=moved)) != 1:
                raise _lost(claim)
            return
        with write(ctx.engine) as conn:
            if not _renew_in(conn, ctx, claim, marks=moved):
                raise _lost(claim)
            _settle(conn, claim, _located(one_by_one, handed))
        recorded.update(key for key, _, _ in one_by_one)

    return hand_off


def _settle(conn: Any, claim: Claim, answers: list[Located]) -> None:
    """Record the gateway's answers for items of our chunk (the caller holds the claim):
    sends, and errors — refunded, except an outcome_unknown, which may have gone out. An
    item the gateway could not take because it was down never left: it stays pending
    with its ticket, marked so that no resume counts it among the answered ones."""
    if not answers:
        return
    d, now = claim.delivery_id, clock.now()
    back = [a for a in answers if a[3] == UNAVAILABLE]
    done = [a for a in answers if a[3] != UNAVAILABLE]
    execute_many(
        conn,
        "UPDATE delivery_items SET error = ? "
        f"WHERE delivery_id = ? AND seq = ? AND message_no = ? AND {_STILL_PENDING}",
        [(UNAVAILABLE, d, s, m) for s, m, _, _ in back],
    )
    execute_many(
        conn,
        "UPDATE delivery_items SET status = ?, error = ?, sent_at = ?, ticket = ? "
        f"WHERE delivery_id = ? AND seq = ? AND message_no = ? AND {_STILL_PENDING}",
        [
            (st, err, now, st == ItemStatus.SENT or err == UNKNOWN, d, s, m)
            for s, m, st, err in done
        ],
    )
    refunded = sum(st != ItemStatus.SENT and err != UNKNOWN for _, _, st, err in done)
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


def _finish(ctx: Context, claim: Claim) -> str:
    """Unregister; if no one else is still sending and nothing is left, close it."""
    d = claim.delivery_id
    with write(ctx.engine) as conn:
        current = conn.execute(
            select(deliveries.c.status).where(deliveries.c.id == d).with_for_update()
        ).scalar_one()
        conn.execute(
            dispatchers.delete().where(
                dispatchers.c.owner == claim.owner, dispatchers.c.from_seq.is_(None)
            )
        )
        if current == DeliveryStatus.PAUSED:
            return current
        unfinished = conn.execute(select(func.count()).where(_pending(d))).scalar_one()
        if unfinished:
            return DeliveryStatus.SENDING  # others are still at it (or will resume a dead one's)
        counts: dict[str, int] = dict(
            conn.execute(  # type: ignore[arg-type]
                select(items.c.status, func.count())
                .where(items.c.delivery_id == d)
                .group_by(items.c.status)
            ).all()
        )
        sent, errors = counts.get(ItemStatus.SENT, 0), counts.get(ItemStatus.ERROR, 0)
        status = DeliveryStatus.finished(sent, errors)
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == d, deliveries.c.status == DeliveryStatus.SENDING)
            .values(status=status, finished_at=clock.now(), pauses=0)
        )
    return status
