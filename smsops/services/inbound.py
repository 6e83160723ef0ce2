"""What the network reports back: delivery reports (DLRs) recorded per message, and
replies — one that asks to stop puts the sender on the opt-out list (R16)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.exc import IntegrityError

from smsops import clock
from smsops.errors import InputError, NotFoundError, Problem
from smsops.services import people
from smsops.services.context import Context
from smsops.store import write
from smsops.store.schema import items

# Kannel's DLR types (the %d of a dlr-url) and what history calls them.
DLR_STATUSES = {
    1: "delivered",
    2: "undeliverable",
    4: "buffered",
    8: "smsc_accepted",
    16: "smsc_rejected",
}
FINAL_DLR = frozenset({"delivered", "undeliverable", "smsc_rejected"})
_KEY = re.compile(r"smsops-(\d+)-(\d+)-(\d+)")


@dataclass(frozen=True)
class DlrResult:
    key: str
    dlr_status: str  # what the item now shows
    recorded: bool  # False: nothing changed (a repeat, or an interim report after a final one)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def dlr_status(code: int) -> str:
    """Kannel's report type → ``delivered`` | ``undeliverable`` | ``buffered`` |
    ``smsc_accepted`` | ``smsc_rejected``; a final bit wins if several are set."""
    for bit in (1, 2, 16, 4, 8):
        if code & bit:
            return DLR_STATUSES[bit]
    raise InputError("dlr", [Problem(None, "status", f"unknown report type {code!r}")])


def record_dlr(
    ctx: Context,
    key: str,
    status_code: int,
    *,
    at: datetime | None = None,
    ref: str | None = None,
) -> DlrResult:
    """Record a delivery report on the message with idempotency key ``key``
    (``smsops-<delivery>-<seq>-<message_no>``). Reports may come before dispatch has
    recorded the send, and in any order: a final state is never replaced by an interim
    one (``buffered`` after ``delivered``). A report of the state the message already
    shows changes nothing — not even its time: Kannel repeats a callback whose answer it
    lost, and an SMSC may send a report twice."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise InputError("dlr", [Problem(None, "key", f"{key!r} is not an smsops message key")])
    status = dlr_status(status_code)
    delivery_id, seq, message_no = (int(g) for g in match.groups())
    this = and_(
        items.c.delivery_id == delivery_id, items.c.seq == seq, items.c.message_no == message_no
    )
    with write(ctx.engine) as conn:
        current = conn.execute(select(items.c.dlr_status).where(this)).one_or_none()
        if current is None:
            raise NotFoundError(f"no message {key}")
        if current.dlr_status == status or (
            current.dlr_status in FINAL_DLR and status not in FINAL_DLR
        ):
            return DlrResult(key, current.dlr_status, False)
        conn.execute(
            items.update()
            .where(this)
            .values(
                dlr_status=status,
                dlr_at=at or clock.now(),
                gateway_ref=func.coalesce(items.c.gateway_ref, ref[:64] if ref else None),
            )
        )
    return DlrResult(key, status, True)


# --- replies (R16) -------------------------------------------------------------------

STOP_WORDS = frozenset({"停止", "配信停止", "stop"})
# Around a stop word, after NFKC: blanks and the punctuation people type with it.
_AROUND = " \t\r\n.,!?。、…・「」『』()[]\"'"


@dataclass(frozen=True)
class ReplyResult:
    action: str  # opted_out | already_opted_out | ignored
    phone: str | None = None  # the sender in E.164, when it is a phone number
    reason: str | None = None  # why a reply was ignored: not_a_stop_request | not_a_phone

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def is_stop_request(text: str) -> bool:
    """Is a reply a request to stop? 停止, 配信停止 or STOP — full- or half-width, any
    case, with blanks or punctuation around it — and nothing else.

    >>> [is_stop_request(t) for t in ("　ＳＴＯＰ　", "配信停止。", "停止しないで")]
    [True, True, False]
    """
    normalized = unicodedata.normalize("NFKC", text).strip(_AROUND).casefold()
    return normalized in STOP_WORDS


def handle_reply(ctx: Context, sender: str, text: str) -> ReplyResult:
    """A reply from ``sender``: a stop request adds the sender to the opt-out list (R16,
    source ``reply``), so every later send skips it; any other reply is ignored. The
    same reply twice, even at the same moment, lists the sender once."""
    if not is_stop_request(text):
        return ReplyResult("ignored", reason="not_a_stop_request")
    try:
        try:
            added = people.optout_add(ctx, sender, source="reply")
        except IntegrityError:
            # The same number went on the list between our look and our insert (Kannel
            # retrying a reply whose first try is still running; PostgreSQL — SQLite
            # writes one at a time): it is listed, which is all this reply asks.
            added = people.optout_add(ctx, sender, source="reply")
    except InputError:
        return ReplyResult("ignored", reason="not_a_phone")
    return ReplyResult("opted_out" if added["added"] else "already_opted_out", str(added["phone"]))
