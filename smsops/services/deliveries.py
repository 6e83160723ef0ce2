"""The delivery lifecycle before and after sending: preview (R13), create (R1, R4, R6–R9,
R12), individual sends, cancel, history (R14) and resend (R15). Sending is dispatch.py."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, case, func, or_, select

from smsops import clock, i18n
from smsops.domain.messages import Message, validate_messages
from smsops.domain.tickets import tickets_needed
from smsops.domain.vocabulary import (
    FINAL_DELIVERY,
    DeliveryStatus,
    ItemError,
    ItemStatus,
    PauseReason,
)
from smsops.errors import (
    NoRecipientsError,
    NotFoundError,
    RuleError,
    StateError,
)
from smsops.logs import mask_text
from smsops.services import account as accounts
from smsops.services.context import Context
from smsops.services.estimates import Completion, completion
from smsops.services.inbound import FAILED_DLR, SETTLING_DLR
from smsops.services.liveness import register
from smsops.store import read, write
from smsops.store.schema import deliveries, items, ledger

# pandas, the frame-building domain, the user tables and the bulk store helpers are
# imported by the functions that use them: `deliveries list` and `dispatch-due` with
# nothing due must not pay for them (#12, tests/test_fast_start.py).
if TYPE_CHECKING:
    import pandas as pd

    from smsops.domain.recipients import Selection

SAMPLE = 10  # masked numbers shown in a confirmation
FINAL = FINAL_DELIVERY


@dataclass
class Preview:
    """The confirmation screen (R13): what would be sent, to whom, when, at what cost."""

    recipients: int
    messages: list[Message]
    balance: int
    scheduled_at: datetime | None  # UTC; None = now
    timezone: str
    excluded: dict[str, int]
    diagnosis: str
    sample: list[str]  # masked numbers
    selection: Selection = field(repr=False)
    # when the last message leaves at the rate cap, the sending window kept (#11)
    completion: Completion | None = None

    @property
    def tickets_needed(self) -> int:
        return tickets_needed(self.recipients, len(self.messages))

    @property
    def shortfall(self) -> int:
        return max(self.tickets_needed - self.balance, 0)

    def recipient_list(self) -> pd.DataFrame:
        """Every recipient in send order: seq, phone (E.164), user_id and how many users
        share the number (R5)."""
        import pandas as pd

        r = self.selection.recipients
        return pd.DataFrame(
            {
                "seq": r["seq"],
                "phone": r["phone"],
                "user_id": r["user_id"],
                "users": r["user_ids"].list.len(),
            }
        )

    def excluded_list(self, unmasked: bool = False) -> pd.DataFrame:
        """Every user left out (R4), in user order: ``user_id``, ``reason``, ``phone``,
        ``duplicate_of`` (the shared number, R5) and ``kept_by`` (the user who keeps that
        number's send); numbers masked (090-****-5678) unless ``unmasked``."""
        import pandas as pd

        from smsops.domain.phones import mask_phones

        e, r = self.selection.excluded, self.selection.recipients
        keeper = pd.Series(
            r["user_id"].to_numpy(dtype=object), index=r["phone"].to_numpy(dtype=object)
        )
        return pd.DataFrame(
            {
                "user_id": e["user_id"],
                "reason": e["reason"],
                "phone": e["phone"] if unmasked else mask_phones(e["phone"]),
                "duplicate_of": e["duplicate_of"] if unmasked else mask_phones(e["duplicate_of"]),
                "kept_by": e["duplicate_of"].map(keeper),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipients": self.recipients,
            "messages": len(self.messages),
            "tickets_needed": self.tickets_needed,
            "balance": self.balance,
            "scheduled_at": clock.local_iso(self.scheduled_at, self.timezone),
            "excluded": self.excluded,
            "shortfall": self.shortfall,
            "texts": [
                {"message_no": m.number, "text": m.text, "length": m.length} for m in self.messages
            ],
            "sample": self.sample,
            "diagnosis": self.diagnosis,
        } | self._completion()

    def _completion(self) -> dict[str, Any]:
        c = self.completion
        if c is None:
            return {}
        return {
            "finish_estimate": clock.local_iso(c.finish, self.timezone),
            "rate_limit": c.rate,
            "window": c.window,
            "warnings": c.warnings,
        }


def preview_bulk(
    ctx: Context,
    messages: Sequence[str],
    *,
    at: str | None = None,
    users_files: Sequence[str | Path] = (),
    query: str | None = None,
) -> Preview:
    """Everything a bulk delivery would do, without saving anything (R13). Refuses what
    could never be created: a lower plan (R1), bad messages (R6, R7), a past time (R12)."""
    from smsops.domain import query as selection_query
    from smsops.domain.phones import mask_phones
    from smsops.domain.recipients import select_recipients
    from smsops.services import people
    from smsops.tables import phone_column_note, read_users_csvs

    acct = accounts.get_account(ctx)
    accounts.require_bulk_plan(acct)
    msgs = validate_messages(messages)
    when = clock.send_time(at, acct.timezone, not_before=ctx.clock())  # "": refused (R12)
    users = (
        read_users_csvs(list(users_files))
        if users_files
        else people.load_users(ctx, with_attrs=bool(query))
    )
    candidates = len(users)
    phone_note = phone_column_note(users) if users_files else None
    if query:
        users = selection_query.select(users, query)
    selection = select_recipients(
        users, people.load_optouts(ctx), phone_field_enabled=acct.phone_field_enabled
    )
    diagnosis = selection.diagnosis()
    if query:  # R4: say what the query did, or it reads as if the table were empty
        picked = (
            f"--query {mask_text(repr(query))} picks {len(users):,} of the {candidates:,} users"
        )
        diagnosis = (
            f"0 recipients: {picked}"
            if len(users) == 0 and candidates
            else f"{picked}; {diagnosis}"
        )
    elif users_files and candidates == 0:
        names = ", ".join(Path(f).name for f in users_files)
        diagnosis = f"0 recipients: the user file has no rows ({names})"
    if phone_note and candidates:  # R3, R4: which of the file's columns held the numbers
        diagnosis = f"{diagnosis}; {phone_note}"
    if not users_files and (inactive := people.inactive_count(ctx)):  # R4, #11
        diagnosis = (
            f"{diagnosis}; {inactive:,} inactive user{'s' * (inactive != 1)} "
            "(not in the latest full export) not selected"
        )
    recipients = len(selection.recipients)
    return Preview(
        recipients=recipients,
        messages=msgs,
        balance=accounts.balance(ctx),
        scheduled_at=when,
        timezone=acct.timezone,
        excluded=selection.counts(),
        diagnosis=diagnosis,
        sample=mask_phones(selection.recipients["phone"].head(SAMPLE)).tolist(),
        selection=selection,
        completion=completion(ctx, acct, when, tickets_needed(recipients, len(msgs))),
    )


@dataclass(frozen=True)
class Created:
    delivery_id: int
    status: str
    recipients: int
    messages: int
    tickets_needed: int
    scheduled_at: str | None

    @property
    def sends_now(self) -> bool:
        """R12, decided once: saved without a send time, it goes out at once; a scheduled
        one waits for dispatch-due."""
        return self.status == DeliveryStatus.QUEUED

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def create_bulk(ctx: Context, preview: Preview, *, outside_window: bool = False) -> Created:
    """Save a confirmed bulk delivery (R13): refused with 0 recipients (R4), too few
    tickets (R9), or outside the sending window unless ``outside_window`` (#11); scheduled
    when it has a time (R12), else queued to send now."""
    import numpy as np
    import pandas as pd

    if preview.recipients == 0:
        raise NoRecipientsError("R4", preview.diagnosis, excluded=preview.excluded)
    if preview.scheduled_at is not None and preview.scheduled_at <= ctx.clock():
        raise RuleError("R12", "the send time has passed since the preview; preview again")
    r = preview.selection.recipients
    k = len(preview.messages)
    # columnar (numbers and Arrow strings, no Python objects): _insert turns one batch at a
    # time into rows (#12)
    each = np.repeat(np.arange(len(r)), k)
    pairs = pd.DataFrame(
        {
            "seq": r["seq"].to_numpy()[each],
            "message_no": np.tile(np.arange(1, k + 1), len(r)),
            "phone": r["phone"].array.take(each),
            "user_id": r["user_id"].array.take(each),
        }
    )
    return _save(
        ctx,
        "bulk",
        [m.text for m in preview.messages],
        pairs,
        recipients=preview.recipients,
        when=preview.scheduled_at,
        tz=preview.timezone,
        outside_window=outside_window,
    )


@dataclass(frozen=True, kw_only=True)
class _Draft:
    """One delivery to save: what :func:`_save_all` inserts."""

    kind: str
    texts: list[str]
    pairs: pd.DataFrame  # seq, message_no, phone, user_id
    recipients: int
    when: datetime | None  # UTC; None = send now
    resend_of: int | None = None
    outside_window: bool = False  # on purpose outside the sending window (#11)


def _save(
    ctx: Context,
    kind: str,
    texts: list[str],
    pairs: pd.DataFrame,
    *,
    recipients: int,
    when: datetime | None,
    tz: str,
    resend_of: int | None = None,
    outside_window: bool = False,
) -> Created:
    """Check tickets (R9) and insert the delivery and its items in one transaction."""
    draft = _Draft(
        kind=kind,
        texts=texts,
        pairs=pairs,
        recipients=recipients,
        when=when,
        resend_of=resend_of,
        outside_window=outside_window,
    )
    return _save_all(ctx, [draft], tz)[0]


def _save_all(ctx: Context, drafts: Sequence[_Draft], tz: str) -> list[Created]:
    """Check tickets (R9) against what all the deliveries need together and insert them in
    one transaction: all of them or, refused, none. A delivery to send now is sent by this
    process: a gateway it cannot use (say Kannel without credentials) refuses it before
    anything is saved. Each must go inside the sending window, or say it goes outside on
    purpose (#11)."""
    now = ctx.clock()
    acct = accounts.get_account(ctx)
    for draft in drafts:
        if not draft.outside_window:
            accounts.require_window(acct, draft.when, now)
    if any(d.when is None for d in drafts):
        ctx.gateway().close()
    created = []
    with write(ctx.engine) as conn:
        accounts.check_tickets(sum(len(d.pairs) for d in drafts), accounts.lock_balance(conn))
        for draft in drafts:
            created.append(_insert(ctx, conn, draft, now=now, tz=tz))
    return created


def _insert(ctx: Context, conn: Connection, draft: _Draft, *, now: datetime, tz: str) -> Created:
    from smsops.store.bulk import insert_rows

    pairs, when = draft.pairs, draft.when
    needed = len(pairs)
    status = DeliveryStatus.SCHEDULED if when is not None else DeliveryStatus.QUEUED
    delivery_id = conn.execute(  # type: ignore[index]
        deliveries.insert().values(
            kind=draft.kind,
            status=status,
            messages=json.dumps(draft.texts, ensure_ascii=False),
            recipients=draft.recipients,
            resend_of=draft.resend_of,
            created_at=now,
            scheduled_at=when,
            allocated=False,
            outside_window=draft.outside_window,
        )
    ).inserted_primary_key[0]
    if when is None:
        # This process sends it right away: register it as the delivery's dispatcher,
        # so that dispatch-due leaves it alone unless this process dies first.
        register(conn, delivery_id)
    step = ctx.settings.write_batch  # rows as Python values one batch at a time (#12)
    for start in range(0, needed, step):
        part = pairs.iloc[start : start + step]
        rows = zip(
            repeat(int(delivery_id), len(part)),
            part["seq"].tolist(),
            part["message_no"].tolist(),
            _values(part["phone"]),
            _values(part["user_id"]),
            repeat(ItemStatus.PENDING, len(part)),
            repeat(False, len(part)),
            strict=True,
        )
        insert_rows(
            conn,
            items,
            ["delivery_id", "seq", "message_no", "phone", "user_id", "status", "ticket"],
            list(rows),
        )
        ctx.progress(min(start + step, needed), needed, "saving delivery")
    return Created(
        int(delivery_id),
        status,
        draft.recipients,
        len(draft.texts),
        needed,
        clock.local_iso(when, tz),
    )


def _values(column: pd.Series) -> list[Any]:
    """A column as Python values, missing ones as None (Arrow strings give pd.NA otherwise,
    which no driver takes)."""
    if column.dtype == "string[pyarrow]":
        import pyarrow as pa

        return pa.array(column.array).to_pylist()
    return column.tolist()


def send_individual(
    ctx: Context,
    phone: str,
    messages: Sequence[str],
    *,
    resend_of: int | None = None,
    outside_window: bool = False,
) -> Created:
    """Save an individual send to one number (never deduplicated, R5); R3, R6, R7, R9,
    R16 and the sending window (#11, unless ``outside_window``) apply. The caller
    dispatches it."""
    import pandas as pd

    from smsops.domain.phones import classify_phones, mask_phone
    from smsops.services import people

    acct = accounts.get_account(ctx)
    msgs = validate_messages(messages)
    row = classify_phones(pd.Series([phone], dtype=object)).iloc[0]
    if not row["mobile"]:
        raise RuleError(
            "R3",
            f"{phone!r} is not a Japanese mobile number ({row['reason']}); "
            "SMS goes to 060/070/080/090 numbers only",
            reason=row["reason"],
        )
    e164 = str(row["e164"])
    if e164 in set(people.load_optouts(ctx)):
        raise RuleError(
            "R16",
            f"{mask_phone(e164)} opted out; it must not be sent to",
            reason=ItemError.OPTED_OUT,
        )
    pairs = pd.DataFrame(
        {"seq": 1, "message_no": [m.number for m in msgs], "phone": e164, "user_id": None}
    )
    return _save(
        ctx,
        "individual",
        [m.text for m in msgs],
        pairs,
        recipients=1,
        when=None,
        tz=acct.timezone,
        resend_of=resend_of,
        outside_window=outside_window,
    )


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


# --- history (R14) -------------------------------------------------------------------

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
        for frame in fetch_frames(conn, stmt, names, batch or ctx.settings.write_batch):
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


# --- resend (R15) --------------------------------------------------------------------

# Failures that a resend must not repair: an opted-out number stays unsent (R16), and a
# message whose outcome was lost may already have arrived.
NOT_RESENT = (ItemError.OPTED_OUT, ItemError.OUTCOME_UNKNOWN)  # the latter may have gone


def failed_pairs(ctx: Context, delivery_id: int) -> pd.DataFrame:
    """The (number, message) pairs of a delivery that failed and are still to repair:
    not opted out since (R16), and not already sent or on their way in an earlier
    resend of it — resending twice must not send twice."""
    import pandas as pd

    from smsops.services import people
    from smsops.store.bulk import fetch_frame

    failed = delivery_items(ctx, delivery_id, failed_only=True)
    failed = failed[~failed["error"].isin(NOT_RESENT)]
    optouts = set(people.load_optouts(ctx))
    failed = failed[~failed["phone"].isin(optouts)]
    with read(ctx.engine) as conn:
        repairs = _resends_of(conn, delivery_id)
        repaired = fetch_frame(
            conn,
            select(items.c.phone, items.c.message_no).where(
                items.c.delivery_id.in_(repairs),
                ITEM_STATUS.in_((ItemStatus.SENT, ItemStatus.PENDING, ItemStatus.SENDING)),
            ),
            ["phone", "message_no"],
        )
    if len(repaired):
        done = pd.MultiIndex.from_frame(repaired)
        failed = failed[~pd.MultiIndex.from_frame(failed[["phone", "message_no"]]).isin(done)]
    return failed.reset_index(drop=True)


def _resends_of(conn: Connection, delivery_id: int) -> list[int]:
    """Every delivery that repairs ``delivery_id``: its resends, their resends, and so on
    (a resend of a resend also sends the original's pairs)."""
    found: list[int] = []
    frontier = [delivery_id]
    while frontier:
        frontier = list(
            conn.execute(select(deliveries.c.id).where(deliveries.c.resend_of.in_(frontier)))
            .scalars()
            .all()
        )
        found += frontier
    return found


def resend_bulk(
    ctx: Context, delivery_id: int, at: str | None = None, *, outside_window: bool = False
) -> Created:
    """R15: a new delivery of exactly the failed (number, message) pairs, linked to the one
    it repairs; R1, R8–R13, R16 and the sending window (#11) apply again."""
    acct = accounts.get_account(ctx)
    accounts.require_bulk_plan(acct)
    when = clock.send_time(at, acct.timezone, not_before=ctx.clock())  # "": refused (R12)
    original = delivery_summary(ctx, delivery_id)
    pairs = failed_pairs(ctx, delivery_id)
    if pairs.empty:
        raise StateError(f"delivery {delivery_id} has no failed messages to resend")
    return _save(
        ctx,
        "resend",
        list(original.texts),
        pairs,
        recipients=int(pairs["seq"].nunique()),
        when=when,
        tz=acct.timezone,
        resend_of=delivery_id,
        outside_window=outside_window,
    )


def resend_individual(
    ctx: Context, delivery_id: int, phone: str | None = None, *, outside_window: bool = False
) -> list[Created]:
    """R15, one number at a time: an individual send per failed number (or just
    ``phone``), each with that number's failed messages, linked to ``delivery_id``.

    Repairing a bulk delivery this way is still bulk SMS: R1 applies (an individual
    send's own failures may be resent on any plan), and R9 to the whole resend — every
    number's send is saved in one transaction, or none is.
    """
    import pandas as pd

    from smsops.domain.phones import classify_phones, mask_phone

    acct = accounts.get_account(ctx)
    original = delivery_summary(ctx, delivery_id)
    if original.kind != "individual":
        accounts.require_bulk_plan(acct)
    texts = list(original.texts)
    pairs = failed_pairs(ctx, delivery_id)
    if phone is not None:
        e164 = classify_phones(pd.Series([phone], dtype=object))["e164"].iloc[0]
        pairs = pairs[pairs["phone"] == e164]
    if pairs.empty:
        raise StateError(
            f"delivery {delivery_id} has no failed messages to resend"
            + (f" to {mask_phone(phone)}" if phone else "")
        )
    drafts = [
        _Draft(
            kind="individual",
            texts=texts,
            pairs=pd.DataFrame(
                {
                    "seq": group["seq"],
                    "message_no": group["message_no"],
                    "phone": str(number),
                    "user_id": group["user_id"],
                }
            ),
            recipients=1,
            when=None,
            resend_of=delivery_id,
            outside_window=outside_window,
        )
        for number, group in pairs.groupby("phone", sort=False)
    ]
    return _save_all(ctx, drafts, acct.timezone)
