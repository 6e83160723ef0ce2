"""Recipient selection (R2–R5, R16): who of a user table receives a bulk delivery, and why
every other user does not."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pandera.typing import DataFrame

from smsops.domain.phones import classify_phones
from smsops.domain.schemas import EXCLUSION_REASONS, STRING, USER_IDS, Exclusions, Recipients
from smsops.domain.vocabulary import Exclusion

# How each reason reads after a count: (singular, plural).
_PHRASES: dict[str, tuple[str, str]] = {
    Exclusion.PHONE_FIELD_DISABLED: ("cannot be a candidate", "cannot be candidates"),
    Exclusion.NO_PHONE: ("has no phone number", "have no phone number"),
    Exclusion.MALFORMED: ("has a malformed phone number", "have malformed phone numbers"),
    Exclusion.NOT_MOBILE: (
        "has a number that is not a Japanese mobile (landline, toll-free, IP phone, "
        "unallocated or foreign)",
        "have numbers that are not Japanese mobiles (landline, toll-free, IP phone, "
        "unallocated or foreign)",
    ),
    Exclusion.OPTED_OUT: ("opted out", "opted out"),
    Exclusion.DUPLICATE: (
        "shares a number with an earlier user (sent once)",
        "share a number with an earlier user (sent once)",
    ),
}


def _count(n: int, word: str = "user") -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Selection:
    """The outcome of selecting recipients from a user table."""

    recipients: DataFrame[Recipients]
    excluded: DataFrame[Exclusions]
    users: int

    def counts(self) -> dict[str, int]:
        """Excluded users per reason, in a fixed order, zero counts left out."""
        c = self.excluded["reason"].value_counts()
        return {r: int(c[r]) for r in EXCLUSION_REASONS if r in c.index}

    def diagnosis(self) -> str:
        """Say in words why users were left out (R4), e.g. ``0 recipients from 150 users:
        120 users have no phone number, 30 users have numbers that are not Japanese mobiles …``."""
        head = f"{_count(len(self.recipients), 'recipient')} from {_count(self.users)}"
        counts = self.counts()
        if self.users == 0:
            return f"{head}: the user table is empty"
        if Exclusion.PHONE_FIELD_DISABLED in counts:
            return (
                f"{head}: the phone field is disabled in the account's registration "
                'fields ("use" is unchecked), so no user is a candidate (R2)'
            )
        parts = [f"{_count(n)} {_PHRASES[r][n != 1]}" for r, n in counts.items()]
        return f"{head}: {', '.join(parts)}" if parts else head


def select_recipients(
    users: pd.DataFrame,
    optouts: Iterable[str] | pd.Series | None = None,
    *,
    phone_field_enabled: bool = True,
) -> Selection:
    """Select one recipient per unique Japanese mobile number, in user order.

    Users without a usable mobile number are excluded with a reason; a number on the
    opt-out list excludes every user who has it (``opted_out``); among users sharing a
    number the first keeps the send and the others are ``duplicate`` of that number (R5).
    ``optouts`` may be written in any form :func:`classify_phones` understands.
    """
    user_id = users["user_id"].astype(STRING).reset_index(drop=True)
    n = len(user_id)
    if not phone_field_enabled:
        excluded = pd.DataFrame(
            {
                "user_id": user_id,
                "reason": pd.array([Exclusion.PHONE_FIELD_DISABLED] * n, dtype=STRING),
                "phone": pd.array([None] * n, dtype=STRING),
                "duplicate_of": pd.array([None] * n, dtype=STRING),
            }
        )
        return Selection(_empty_recipients(), DataFrame[Exclusions](excluded), n)

    phones = classify_phones(users["phone"].reset_index(drop=True))
    reason = phones["reason"].copy()
    e164 = phones["e164"]
    if optouts is not None:
        suppressed = suppression_set(optouts)
        hit = phones["mobile"].to_numpy() & e164.isin(suppressed).to_numpy()
        reason[hit] = Exclusion.OPTED_OUT
    candidate = reason.isna().to_numpy()
    cand_e164 = e164[candidate]
    dup = np.zeros(n, dtype=bool)
    dup[np.flatnonzero(candidate)[cand_e164.duplicated(keep="first").to_numpy()]] = True
    reason[dup] = Exclusion.DUPLICATE
    keep = candidate & ~dup

    recipients = _group(user_id[candidate], cand_e164, keep[candidate])
    excl_mask = ~keep
    excluded = pd.DataFrame(
        {
            "user_id": user_id[excl_mask],
            "reason": reason[excl_mask],
            "phone": e164[excl_mask],
            "duplicate_of": e164[excl_mask].where(dup[excl_mask]),
        }
    ).reset_index(drop=True)
    return Selection(recipients, DataFrame[Exclusions](excluded), n)


def suppression_set(optouts: Iterable[str] | pd.Series) -> pd.Series:
    """Normalize an opt-out list to E.164 numbers (unparseable entries are dropped)."""
    raw = optouts if isinstance(optouts, pd.Series) else pd.Series(list(optouts), dtype=STRING)
    return classify_phones(raw.reset_index(drop=True))["e164"].dropna().unique()


def _group(user_ids: pd.Series, e164: pd.Series, first: np.ndarray) -> DataFrame[Recipients]:
    """One row per number in first-appearance order, with all user ids sharing it.

    Vectorized: numbers are factorized in order of appearance, the user ids sorted stably
    by number and cut into one list per number (a hash aggregation into lists took most
    of a 1M-user preview, #12)."""
    codes, numbers = pd.factorize(e164.array, use_na_sentinel=False)
    groups = len(numbers)
    order = np.argsort(codes, kind="stable")  # user order within each number
    offsets = np.zeros(groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes, minlength=groups), out=offsets[1:])
    ids = pa.array(user_ids.array, type=pa.large_string())  # an Array, or a ChunkedArray
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), ids.take(pa.array(order)))
    lists = lists.cast(pa.list_(pa.large_string()))
    out = pd.DataFrame(
        {
            "seq": np.arange(1, groups + 1, dtype=np.int64),
            "phone": pd.array(pa.array(numbers, type=pa.large_string()), dtype=STRING),
            "user_id": pd.array(ids.take(pa.array(order[offsets[:-1]])), dtype=STRING),
            "user_ids": pd.array(lists, dtype=USER_IDS),
        }
    )
    assert int(first.sum()) == len(out)
    return DataFrame[Recipients](out)


def _empty_recipients() -> DataFrame[Recipients]:
    return DataFrame[Recipients](
        pd.DataFrame(
            {
                "seq": pd.Series([], dtype=np.int64),
                "phone": pd.array([], dtype=STRING),
                "user_id": pd.array([], dtype=STRING),
                "user_ids": pd.array([], dtype=USER_IDS),
            }
        )
    )
