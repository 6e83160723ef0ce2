"""What happened to deliveries (R14): the list, one delivery in detail, its (number,
message) pairs as delivery reports have since told, what waits to be sent; and cancelling
one that has not started (R12)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, case, func, or_, select

from smsops import clock, i18n
from smsops.domain.vocabulary import (
    FINAL_DELIVERY,
    DeliveryStatus,
    ItemError,
    ItemStatus,
    PauseReason,
)
from smsops.errors import NotFoundError, StateError
from smsops.i18n import N_
from smsops.services import account as accounts
from smsops.services.context import Context
from smsops.services.inbound import FAILED_DLR, SETTLING_DLR
from smsops.store import read, write
from smsops.store.schema import deliveries, items, ledger

if TYPE_CHECKING:
    import pandas as pd


FINAL = FINAL_DELIVERY  # the statuses a delivery ends in


# Delivery reports change what every view shows (R14, R15): a final negative report makes
# a pair the SMSC took an error (named for the report; its ticket stays spent), and a
# delivered or SMSC-accepted one settles an outcome_unknown pair as sent. Read here, not
# written over the item: a report may land before dispatch records the send.
_UNKNOWN = and_(items.c.status == ItemStatus.ERROR, items.c.error == ItemError.OUTCOME_UNKNOWN)
_REPORTED_FAILED = and_(
    or_(items.c.status == ItemStatus.SENT, _UNKNOWN), items.c.dlr_status.in_(sorted(FAILED_DLR))
)
_REPORTED_SENT = and_(_UNKNOWN, items.c.dlr_status.in_(sorted(SETTLING_DLR)))
ITEM_STATUS = case(
    (_REPORTED_FAILED, ItemStatus.ERROR), (_REPORTED_SENT, ItemStatus.SENT), else_=items.c.status
)
ITEM_ERROR = case(
    (_REPORTED_FAILED, items.c.dlr_status), (_REPORTED_SENT, None), else_=items.c.error
)


def _counts(conn: Connection, ids: list[int] | None) -> dict[int, dict[str, int]]:
    sent = func.sum(case((ITEM_STATUS == ItemStatus.SENT, 1), else_=0))
    errors = func.sum(case((ITEM_STATUS == ItemStatus.ERROR, 1), else_=0))
    stmt = select(items.c.delivery_id, sent, errors).group_by(items.c.delivery_id)
    if ids is not None:
        stmt = stmt.where(items.c.delivery_id.in_(ids))
    out = {int(d): {"sent": int(s or 0), "errors": int(e or 0)} for d, s, e in conn.execute(stmt)}
    used = (
        select(ledger.c.delivery_id, -func.sum(ledger.c.amount))
        .where(ledger.c.delivery_id.is_not(None))
        .group_by(ledger.c.delivery_id)
    )
    if ids is not None:
        used = used.where(ledger.c.delivery_id.in_(ids))
    for d, n in conn.execute(used):
        out.setdefault(int(d), {"sent": 0, "errors": 0})["tickets_used"] = int(n or 0)
    return out


@dataclass(frozen=True)
class DeliverySummary:
    """One delivery as its history shows it (R14): kind, status, times (ISO 8601 in the
    account's zone) and counts. The detail (:func:`delivery_summary`) adds its texts, why
    and until when it is paused (#11) and whether it goes outside the window on purpose;
    a listing (:func:`list_deliveries`) leaves them out, as its --json does."""

    id: int
    kind: str
    status: str  # DeliveryStatus
    created_at: str | None
    scheduled_at: str | None
    finished_at: str | None
    recipients: int
    messages: int
    sent: int
    errors: int
    tickets_used: int
    resend_of: int | None
    # the detail only
    texts: tuple[str, ...] = ()
    paused_for: str | None = None  # PauseReason, when paused
    paused_reason: str | None = None
    resume_at: str | None = None
    outside_window: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The --json document: ``deliveries list``'s rows, ``deliveries show``'s delivery."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "created_at": self.created_at,
            "scheduled_at": self.scheduled_at,
            "finished_at": self.finished_at,
            "recipients": self.recipients,
            "messages": self.messages,
            "sent": self.sent,
            "errors": self.errors,
            "tickets_used": self.tickets_used,
            "resend_of": self.resend_of,
        }
        if self.texts:
            out["texts"] = list(self.texts)
        if self.paused_for is not None:
            out |= {
                "paused_for": self.paused_for,
                "paused_reason": self.paused_reason,
                "resume_at": self.resume_at,
            }
        if self.outside_window:
            out["outside_window"] = True
        return out

    def human(self) -> dict[str, str]:
        """The delivery as a person reads it, label → value in the reader's language
        (#14, #15): the one rendering ``deliveries show``, ``deliveries list``, the report
        notebook and the dispatch summary artifact each lay out in their own medium (a
        terminal table, a notebook table, markdown). Times as the language writes them,
        counts with separators; the status and kind as they are stored (what ``--json``
        and the filters say); a field with nothing to say is left out, except the send
        time, which reads "now" for a delivery sent at once."""
        from smsops.refusals import localize

        _, n = i18n._, i18n.number

        def time(value: str | None) -> str:
            return "" if value is None else i18n.local_time(value)

        values = {
            "id": str(self.id),
            "kind": self.kind,
            "status": self.status,
            "created_at": time(self.created_at),
            "scheduled_at": time(self.scheduled_at) if self.scheduled_at else _("now"),
            "finished_at": time(self.finished_at),
            "recipients": n(self.recipients),
            "messages": n(self.messages),
            "sent": n(self.sent),
            "errors": n(self.errors),
            "tickets_used": n(self.tickets_used),
            "resend_of": "" if self.resend_of is None else str(self.resend_of),
        }
        if self.paused_for is not None:  # why it waits, and until when (#11)
            values |= {
                "paused_for": self.paused_for,
                "paused_reason": localize(self.paused_reason or ""),
                "resume_at": time(self.resume_at),
            }
        if self.outside_window:
            values["outside_window"] = _("yes, on purpose")
        rows = {_(LABELS[field]): value for field, value in values.items()}
        for number, text in enumerate(self.texts, start=1):
            rows[_("message {number}").format(number=number)] = text
        return {label: value for label, value in rows.items() if value}

    @staticmethod
    def columns() -> list[str]:
        """The labels ``deliveries list`` shows as its columns, in the reader's language:
        :meth:`human`'s, for the fields of :data:`LISTED`."""
        return [i18n._(LABELS[field]) for field in LISTED]


# What a person reads beside each field of a delivery (#14, #15); the keys are the --json
# document's. `deliveries list` shows the LISTED ones as columns.
LABELS = {
    "id": N_("delivery"),
    "kind": N_("kind"),
    "status": N_("status"),
    "created_at": N_("created"),
    "scheduled_at": N_("scheduled"),
    "finished_at": N_("finished"),
    "recipients": N_("recipients"),
    "messages": N_("messages"),
    "sent": N_("sent"),
    "errors": N_("errors"),
    "tickets_used": N_("tickets used"),
    "resend_of": N_("resend of"),
    "paused_for": N_("paused for"),
    "paused_reason": N_("why paused"),
    "resume_at": N_("resumes at"),
    "outside_window": N_("outside the window"),
}
LISTED = (
    "id",
    "kind",
    "status",
    "created_at",
    "scheduled_at",
    "recipients",
    "sent",
    "errors",
    "tickets_used",
    "resend_of",
)


def _summary(row, counts: dict[str, int], tz: str, *, detail: bool = False) -> DeliverySummary:  # type: ignore[no-untyped-def]
    status = row.status
    ended = (DeliveryStatus.SENT, DeliveryStatus.PARTIALLY_SENT, DeliveryStatus.FAILED)
    if status in ended:  # as reports have since told
        status = DeliveryStatus.finished(counts.get("sent", 0), counts.get("errors", 0))
    texts = json.loads(row.messages)
    paused = detail and row.status == DeliveryStatus.PAUSED  # why, and until when (#11)
    return DeliverySummary(
        id=row.id,
        kind=row.kind,
        status=status,
        created_at=clock.local_iso(row.created_at, tz),
        scheduled_at=clock.local_iso(row.scheduled_at, tz),
        finished_at=clock.local_iso(row.finished_at, tz),
        recipients=row.recipients,
        messages=len(texts),
        sent=counts.get("sent", 0),
        errors=counts.get("errors", 0),
        tickets_used=counts.get("tickets_used", 0),
        resend_of=row.resend_of,
        texts=tuple(texts) if detail else (),
        # before v13 a pause was always the gateway's
        paused_for=(row.paused_for or PauseReason.GATEWAY_DOWN) if paused else None,
        paused_reason=row.paused_reason if paused else None,
        resume_at=clock.local_iso(row.resume_at, tz) if paused else None,
        outside_window=detail and bool(row.outside_window),
    )


def list_deliveries(ctx: Context, limit: int | None = None) -> list[DeliverySummary]:
    """R14: every delivery, newest first, with its counts."""
    tz = accounts.get_account(ctx).timezone
    with read(ctx.engine) as conn:
        stmt = select(deliveries).order_by(deliveries.c.id.desc())
        rows = conn.execute(stmt.limit(limit) if limit else stmt).all()
        counts = _counts(conn, [r.id for r in rows] if limit else None)
    return [_summary(r, counts.get(r.id, {}), tz) for r in rows]


def delivery_summary(ctx: Context, delivery_id: int) -> DeliverySummary:
    """R14: one delivery in detail (its texts, and why it is paused, #11)."""
    tz = accounts.get_account(ctx).timezone
    with read(ctx.engine) as conn:
        row = _delivery(conn, delivery_id)
        counts = _counts(conn, [delivery_id]).get(delivery_id, {})
    return _summary(row, counts, tz, detail=True)


def delivery_items(ctx: Context, delivery_id: int, *, failed_only: bool = False) -> pd.DataFrame:
    """R14: every (number, message) of a delivery with its status and error reason.
    ``sending`` (handed to the gateway, outcome not recorded yet) reads as pending; a
    final negative delivery report reads as an error named for it (``undeliverable``,
    ``smsc_rejected``), a delivered one as settling ``outcome_unknown`` (sent).
    Read in batches (:func:`iter_delivery_items`): never more than the frame and one
    batch as Python rows (#12)."""
    import pandas as pd

    parts = list(iter_delivery_items(ctx, delivery_id, failed_only=failed_only))
    if len(parts) == 1:
        return parts[0]
    # a batch whose times are all missing holds them as None (object): the whole frame
    # has them as datetimes with NaT, as one read of every row would
    times = {c for p in parts for c in p.columns if p[c].dtype.kind == "M"}
    frame = pd.concat(parts, ignore_index=True)
    del parts
    for name in times:
        frame[name] = pd.to_datetime(frame[name])
    return frame


def iter_delivery_items(
    ctx: Context, delivery_id: int, *, failed_only: bool = False, batch: int | None = None
) -> Iterator[pd.DataFrame]:
    """:func:`delivery_items` in frames of at most ``batch`` rows (default
    ``settings.write_batch``), in (seq, message_no) order, read one batch at a time from
    one snapshot: a history of millions of pairs in bounded memory (#12). Always yields
    at least one frame (empty when there is nothing to read)."""
    from smsops.store.bulk import fetch_frames

    cols = [
        items.c.seq,
        items.c.phone,
        items.c.user_id,
        items.c.message_no,
        ITEM_STATUS.label("status"),
        ITEM_ERROR.label("error"),
        items.c.sent_at,
        items.c.dlr_status,
        items.c.dlr_at,
        items.c.dlr_reason,  # the SMSC's answer with the report (``stat:UNDELIV err:001``)
    ]
    names = [c.name for c in cols]
    with read(ctx.engine) as conn:
        _delivery(conn, delivery_id)
        stmt = select(*cols).where(items.c.delivery_id == delivery_id)
        if failed_only:
            stmt = stmt.where(ITEM_STATUS == ItemStatus.ERROR)
        stmt = stmt.order_by(items.c.seq, items.c.message_no)
        empty = True
        for frame in fetch_frames(conn, stmt, names, batch=batch or ctx.settings.write_batch):
            empty = False
            frame["status"] = frame["status"].replace(
                {ItemStatus.SENDING: ItemStatus.PENDING.value}
            )
            yield frame
        if empty:
            import pandas as pd

            yield pd.DataFrame(columns=names)


def iso_times(values: pd.Series, tz: str) -> pd.Series:
    """UTC times from the store as ISO 8601 in the account's zone (None where missing),
    vectorized: ``2026-12-01T10:00:05+09:00``."""
    import pandas as pd

    local = pd.to_datetime(values, utc=True).dt.tz_convert(tz)
    text = local.dt.strftime("%Y-%m-%dT%H:%M:%S%z").str.replace(
        r"([+-]\d\d)(\d\d)$", r"\1:\2", regex=True
    )
    return text.astype(object).where(local.notna(), None)


def waiting_demand(ctx: Context) -> pd.DataFrame:
    """Deliveries waiting to be sent (queued or scheduled) with the tickets each will ask
    for at send time — its pending pairs — and when (UTC), soonest first. Scheduled
    deliveries reserve nothing (R10): this is what competes for the balance."""
    from smsops.store.bulk import fetch_frame

    due = func.coalesce(deliveries.c.scheduled_at, deliveries.c.created_at)
    stmt = (
        select(deliveries.c.id, deliveries.c.kind, due.label("due"), func.count(items.c.seq))
        .join(items, items.c.delivery_id == deliveries.c.id)
        .where(
            deliveries.c.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.SCHEDULED)),
            items.c.status == ItemStatus.PENDING,
        )
        .group_by(deliveries.c.id, deliveries.c.kind, due)
        .order_by(due, deliveries.c.id)
    )
    with read(ctx.engine) as conn:
        frame = fetch_frame(conn, stmt, ["id", "kind", "due", "tickets"])
    frame["due"] = frame["due"].map(clock.from_store)
    return frame


# --- cancel (R12) --------------------------------------------------------------------


@dataclass(frozen=True)
class Cancelled:
    """A delivery cancelled before it started (R12): none of its messages go out."""

    delivery_id: int
    status: DeliveryStatus = DeliveryStatus.CANCELLED

    def to_dict(self) -> dict[str, Any]:
        return {"delivery_id": self.delivery_id, "status": self.status}

    def describe(self) -> str:
        return i18n._("delivery {id} cancelled").format(id=self.delivery_id)


def cancel(ctx: Context, delivery_id: int) -> Cancelled:
    """Cancel a delivery that has not started (R12)."""
    with write(ctx.engine) as conn:
        row = _delivery(conn, delivery_id, lock=True)
        if row.status not in (DeliveryStatus.SCHEDULED, DeliveryStatus.QUEUED):
            raise StateError(
                f"delivery {delivery_id} is {row.status}; only a delivery that "
                "has not started sending can be cancelled"
            )
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id)
            .values(status=DeliveryStatus.CANCELLED, finished_at=clock.now())
        )
        conn.execute(
            items.update()
            .where(items.c.delivery_id == delivery_id, items.c.status == ItemStatus.PENDING)
            .values(status=ItemStatus.CANCELLED)
        )
    return Cancelled(delivery_id)


def _delivery(conn: Connection, delivery_id: int, lock: bool = False):  # type: ignore[no-untyped-def]
    stmt = select(deliveries).where(deliveries.c.id == delivery_id)
    row = conn.execute(stmt.with_for_update() if lock else stmt).one_or_none()
    if row is None:
        raise NotFoundError(f"no delivery {delivery_id}")
    return row
