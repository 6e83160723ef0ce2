"""Resends (R15): the failed pairs still to repair, and a new bulk or individual
delivery of exactly those, linked to the one it repairs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, select

from smsops import clock
from smsops.domain.vocabulary import ItemError, ItemStatus
from smsops.errors import StateError
from smsops.services import account as accounts
from smsops.services.context import Context
from smsops.services.deliveries.create import Created, Draft, save, save_all
from smsops.services.deliveries.history import ITEM_STATUS, delivery_items, delivery_summary
from smsops.store import read
from smsops.store.schema import deliveries, items

if TYPE_CHECKING:
    import pandas as pd


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
    return save(
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
        Draft(
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
    return save_all(ctx, drafts, acct.timezone)
