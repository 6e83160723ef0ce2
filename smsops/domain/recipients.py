"""Recipient selection (R2–R5, R16): who of a user table receives a bulk delivery, and why
every other user does not."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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


def _diagnosis(recipients: int, users: int, counts: dict[str, int]) -> str:
    """R4 in words, from the counts alone (see :meth:`Selection.diagnosis`)."""
    head = f"{_count(recipients, 'recipient')} from {_count(users)}"
    if users == 0:
        return f"{head}: the user table is empty"
    if Exclusion.PHONE_FIELD_DISABLED in counts:
        return (
            f"{head}: the phone field is disabled in the account's registration "
            'fields ("use" is unchecked), so no user is a candidate (R2)'
        )
    parts = [f"{_count(n)} {_PHRASES[r][n != 1]}" for r, n in counts.items()]
    return f"{head}: {', '.join(parts)}" if parts else head


def _ordered(counts: dict[str, int]) -> dict[str, int]:
    """Counts per reason in a fixed order, zero counts left out."""
    return {r: counts[r] for r in EXCLUSION_REASONS if counts.get(r)}


@dataclass(frozen=True)
class Selection:
    """The outcome of selecting recipients from a user table."""

    recipients: DataFrame[Recipients]
    excluded: DataFrame[Exclusions]
    users: int

    def counts(self) -> dict[str, int]:
        """Excluded users per reason, in a fixed order, zero counts left out."""
        c = self.excluded["reason"].value_counts()
        return _ordered({r: int(n) for r, n in c.items()})

    def diagnosis(self) -> str:
        """Say in words why users were left out (R4), e.g. ``0 recipients from 150 users:
        120 users have no phone number, 30 users have numbers that are not Japanese mobiles …``."""
        return _diagnosis(len(self.recipients), self.users, self.counts())


@dataclass(frozen=True)
class SelectedBatch:
    """What one batch of users gave (:meth:`RecipientStream.feed`): its recipients
    (``seq``, ``phone``, ``user_id``; ``seq`` running on from the batches before) and its
    excluded users, both in user order."""

    recipients: pd.DataFrame
    excluded: DataFrame[Exclusions]


class RecipientStream:
    """Recipient selection fed a user table one batch at a time, in user order (#12).

    Each batch is decided as :func:`select_recipients` decides the whole table: only what
    a decision across batches needs is kept — the numbers already given to a recipient
    (R5, as sorted int64 keys: 8 bytes a recipient), the count per reason (R4) and the
    number of users and recipients. The batches' recipients and exclusions, put end to
    end, are :func:`select_recipients`' (``user_ids`` aside: a later batch may add a user
    to an earlier number; the exclusions name it by ``duplicate_of``)."""

    def __init__(
        self,
        optouts: Iterable[str] | pd.Series | None = None,
        *,
        phone_field_enabled: bool = True,
    ) -> None:
        self.phone_field_enabled = phone_field_enabled
        suppressed = suppression_set(optouts) if optouts is not None else []
        self._suppressed = np.unique(_keys(pd.Series(suppressed, dtype=STRING)))
        self._seen = np.empty(0, dtype=np.int64)  # sorted keys of the recipients' numbers
        self._counts: dict[str, int] = {}
        self.users = 0
        self.recipients = 0

    def counts(self) -> dict[str, int]:
        """Excluded users per reason so far, in a fixed order, zero counts left out."""
        return _ordered(self._counts)

    def diagnosis(self) -> str:
        """:meth:`Selection.diagnosis` of the users fed so far."""
        return _diagnosis(self.recipients, self.users, self.counts())

    def feed(self, users: pd.DataFrame) -> SelectedBatch:
        """Select from the next batch of users (``user_id``, ``phone``)."""
        return self._feed(users)[0]

    def _feed(self, users: pd.DataFrame) -> tuple[SelectedBatch, pd.Series, pd.Series, np.ndarray]:
        """(the batch's selection, its user ids, its E.164 numbers, the positions of its
        candidates: recipients and duplicates, in user order)."""
        user_id = users["user_id"].astype(STRING).reset_index(drop=True)
        n = len(user_id)
        self.users += n
        if not self.phone_field_enabled:
            self._add_counts({Exclusion.PHONE_FIELD_DISABLED: n})
            nothing = pd.array([None] * n, dtype=STRING)
            excluded = pd.DataFrame(
                {
                    "user_id": user_id,
                    "reason": pd.array([Exclusion.PHONE_FIELD_DISABLED] * n, dtype=STRING),
                    "phone": nothing,
                    "duplicate_of": nothing,
                }
            )
            e164 = pd.Series(nothing)
            batch = SelectedBatch(
                _recipient_rows(self.recipients, e164[:0], user_id[:0]),
                DataFrame[Exclusions](excluded),
            )
            return batch, user_id, e164, np.empty(0, dtype=np.int64)

        phones = classify_phones(users["phone"].reset_index(drop=True))
        reason = phones["reason"].copy()
        e164 = phones["e164"]
        pos = np.flatnonzero(phones["mobile"].to_numpy(dtype=bool))  # reason NA: a mobile
        keys = _keys(e164.iloc[pos])
        if len(self._suppressed):  # R16
            hit = _member(keys, self._suppressed)
            opted = np.zeros(n, dtype=bool)
            opted[pos[hit]] = True
            reason[opted] = Exclusion.OPTED_OUT
            pos, keys = pos[~hit], keys[~hit]
        # R5: the first user of a number keeps it, here or in an earlier batch
        new = np.zeros(len(keys), dtype=bool)
        new[np.unique(keys, return_index=True)[1]] = True
        new &= ~_member(keys, self._seen)
        self._seen = _merge(self._seen, keys[new])
        dup = np.zeros(n, dtype=bool)
        dup[pos[~new]] = True
        reason[dup] = Exclusion.DUPLICATE
        keep = np.zeros(n, dtype=bool)
        keep[pos[new]] = True

        recipients = _recipient_rows(self.recipients, e164[keep], user_id[keep])
        self.recipients += len(recipients)
        excl_mask = ~keep
        excluded = pd.DataFrame(
            {
                "user_id": user_id[excl_mask],
                "reason": reason[excl_mask],
                "phone": e164[excl_mask],
                "duplicate_of": e164[excl_mask].where(dup[excl_mask]),
            }
        ).reset_index(drop=True)
        self._add_counts({r: int(c) for r, c in excluded["reason"].value_counts().items()})
        return SelectedBatch(recipients, DataFrame[Exclusions](excluded)), user_id, e164, pos

    def _add_counts(self, counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            self._counts[reason] = self._counts.get(reason, 0) + n


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
    A table too large to hold whole goes through :class:`RecipientStream` batch by batch.
    """
    stream = RecipientStream(optouts, phone_field_enabled=phone_field_enabled)
    batch, user_id, e164, candidates = stream._feed(users)
    if not len(candidates):
        return Selection(_empty_recipients(), batch.excluded, stream.users)
    recipients = _group(user_id.iloc[candidates], e164.iloc[candidates])
    assert len(recipients) == len(batch.recipients)
    return Selection(recipients, batch.excluded, stream.users)


def suppression_set(optouts: Iterable[str] | pd.Series) -> pd.Series:
    """Normalize an opt-out list to E.164 numbers (unparseable entries are dropped)."""
    raw = optouts if isinstance(optouts, pd.Series) else pd.Series(list(optouts), dtype=STRING)
    return classify_phones(raw.reset_index(drop=True))["e164"].dropna().unique()


def _keys(e164: pd.Series) -> np.ndarray:
    """E.164 numbers as int64 (``+819012345678`` → 819012345678): one to one, as every
    E.164 number starts with a country code (never 0) and has at most 15 digits."""
    values = pa.array(e164.array, type=pa.large_string())
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return pc.cast(pc.utf8_slice_codeunits(values, 1), pa.int64()).to_numpy(zero_copy_only=False)


def _member(keys: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Which ``keys`` are in ``known`` (sorted)."""
    if not len(known) or not len(keys):
        return np.zeros(len(keys), dtype=bool)
    at = np.searchsorted(known, keys)
    at[at == len(known)] = 0
    return known[at] == keys


def _merge(known: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``known`` (sorted) with ``new`` (none of them in it) put in their places: a copy,
    not a sort of the whole."""
    new = np.sort(new)
    return np.insert(known, np.searchsorted(known, new), new)


def _recipient_rows(before: int, e164: pd.Series, user_id: pd.Series) -> pd.DataFrame:
    """A batch's recipients: ``seq`` numbered on from ``before``, ``phone``, ``user_id``."""
    return pd.DataFrame(
        {
            "seq": np.arange(before + 1, before + len(e164) + 1, dtype=np.int64),
            "phone": pd.array(e164.array, dtype=STRING),
            "user_id": pd.array(user_id.array, dtype=STRING),
        }
    )


def _group(user_ids: pd.Series, e164: pd.Series) -> DataFrame[Recipients]:
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
