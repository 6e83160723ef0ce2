"""Saving a delivery (R1, R9, R12, the sending window of #11): a confirmed bulk preview,
or the pairs an individual send or a resend builds, checked for tickets and inserted with
its items in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy import Connection

from smsops import clock
from smsops.domain.vocabulary import DeliveryStatus, ItemStatus
from smsops.errors import NoRecipientsError, RuleError, Text
from smsops.i18n import N_
from smsops.services import account as accounts
from smsops.services.context import Context
from smsops.services.deliveries.preview import Preview
from smsops.services.liveness import register
from smsops.store import write
from smsops.store.schema import deliveries, items

if TYPE_CHECKING:
    import pandas as pd

    # A delivery's pairs (seq, message_no, phone, user_id): a frame, or frames read in
    # the creation's transaction (a bulk selection, #12).
    Pairs: TypeAlias = pd.DataFrame | Callable[[Connection], Iterator[pd.DataFrame]]


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
    if preview.recipients == 0:
        raise NoRecipientsError("R4", preview.diagnosis, excluded=preview.excluded)
    if preview.scheduled_at is not None and preview.scheduled_at <= ctx.clock():
        raise RuleError("R12", "the send time has passed since the preview; preview again")
    k = len(preview.messages)
    pairs: Pairs
    if preview.held is not None:
        pairs = _pairs(preview.held.recipients, k)
    else:  # selected again batch by batch, written as it goes (#12)
        enabled = accounts.get_account(ctx).phone_field_enabled
        pairs = partial(_reselected, ctx, preview, enabled)
    return save(
        ctx,
        "bulk",
        [m.text for m in preview.messages],
        pairs,
        recipients=preview.recipients,
        when=preview.scheduled_at,
        tz=preview.timezone,
        outside_window=outside_window,
    )


def _pairs(recipients: pd.DataFrame, k: int) -> pd.DataFrame:
    """Every (recipient, message) pair in send order: seq, message_no, phone, user_id;
    columnar (numbers and Arrow strings, no Python objects): _insert turns one batch at a
    time into rows (#12)."""
    import numpy as np
    import pandas as pd

    each = np.repeat(np.arange(len(recipients)), k)
    return pd.DataFrame(
        {
            "seq": recipients["seq"].to_numpy()[each],
            "message_no": np.tile(np.arange(1, k + 1), len(recipients)),
            "phone": recipients["phone"].array.take(each),
            "user_id": recipients["user_id"].array.take(each),
        }
    )


def _reselected(
    ctx: Context, preview: Preview, phone_field_enabled: bool, conn: Connection
) -> Iterator[pd.DataFrame]:
    """The preview's pairs, its users read and selected again batch by batch in the
    creation's transaction ``conn`` (#12): only one batch of users and its pairs are in
    memory. Refused (R13), which rolls the delivery back, when the selection is not the
    one the preview showed (users imported or opted out since)."""
    from smsops.domain.recipients import RecipientStream
    from smsops.services import people

    k = len(preview.messages)
    stream = RecipientStream(
        people.load_optouts_conn(conn), phone_field_enabled=phone_field_enabled
    )
    for users in people.iter_users(conn, ctx.settings.write_batch):
        yield _pairs(stream.feed(users).recipients, k)
        ctx.progress(stream.users, max(preview.users, stream.users), "selecting recipients")
    then = (preview.users, preview.recipients, preview.excluded)
    if (stream.users, stream.recipients, stream.counts()) != then:
        raise RuleError(
            "R13",
            Text(
                N_(
                    "the users changed since the preview ({then} recipients, now {now}); "
                    "preview again"
                ),
                then=preview.recipients,
                now=stream.recipients,
            ),
        )


@dataclass(frozen=True, kw_only=True)
class Draft:
    """One delivery to save: what :func:`save_all` inserts."""

    kind: str
    texts: list[str]
    pairs: Pairs
    recipients: int
    when: datetime | None  # UTC; None = send now
    resend_of: int | None = None
    outside_window: bool = False  # on purpose outside the sending window (#11)

    @property
    def needed(self) -> int:
        """Tickets it needs (R8): one per pair."""
        if callable(self.pairs):  # a bulk selection: each recipient gets every message
            return self.recipients * len(self.texts)
        return len(self.pairs)


def save(
    ctx: Context,
    kind: str,
    texts: list[str],
    pairs: Pairs,
    *,
    recipients: int,
    when: datetime | None,
    tz: str,
    resend_of: int | None = None,
    outside_window: bool = False,
) -> Created:
    """Check tickets (R9) and insert the delivery and its items in one transaction."""
    draft = Draft(
        kind=kind,
        texts=texts,
        pairs=pairs,
        recipients=recipients,
        when=when,
        resend_of=resend_of,
        outside_window=outside_window,
    )
    return save_all(ctx, [draft], tz)[0]


def save_all(ctx: Context, drafts: Sequence[Draft], tz: str) -> list[Created]:
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
        accounts.check_tickets(sum(d.needed for d in drafts), accounts.lock_balance(conn))
        for draft in drafts:
            created.append(_insert(ctx, conn, draft, now=now, tz=tz))
    return created


def _insert(ctx: Context, conn: Connection, draft: Draft, *, now: datetime, tz: str) -> Created:
    from smsops.store.bulk import insert_rows

    when, needed = draft.when, draft.needed
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
    frames = draft.pairs(conn) if callable(draft.pairs) else [draft.pairs]
    done = 0
    for part in (f.iloc[i : i + step] for f in frames for i in range(0, len(f), step)):
        rows = zip(
            part["seq"].tolist(),
            part["message_no"].tolist(),
            _values(part["phone"]),
            _values(part["user_id"]),
            strict=True,
        )
        insert_rows(  # what every item shares goes once, not on each row (#12)
            conn,
            items,
            ["seq", "message_no", "phone", "user_id"],
            rows=list(rows),
            same={"delivery_id": int(delivery_id), "status": ItemStatus.PENDING, "ticket": False},
        )
        done += len(part)
        ctx.progress(done, max(needed, done), "saving delivery")
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
