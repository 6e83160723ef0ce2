"""The confirmation screen of a bulk delivery (R13): who would get what, when, at what
cost, and who is left out and why (R4) — without saving anything."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smsops import clock
from smsops.domain.messages import Message, validate_messages
from smsops.domain.tickets import tickets_needed
from smsops.logs import mask_text
from smsops.services import account as accounts
from smsops.services.context import Context
from smsops.services.estimates import Completion, completion

if TYPE_CHECKING:
    import pandas as pd

    from smsops.domain.recipients import Selection

SAMPLE = 10  # masked numbers shown in a confirmation


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
    # when the last message leaves at the rate cap, the sending window kept (#11)
    completion: Completion | None = None
    users: int = 0  # users considered (after a --query: those it picks)
    # The whole selection when it was made whole (a users file, a --query); a selection
    # from the store is read batch by batch and kept as its counts only, ``source`` its
    # store: creating selects it again the same way (#12).
    held: Selection | None = field(default=None, repr=False)
    source: Context | None = field(default=None, repr=False)

    @property
    def selection(self) -> Selection:
        """The whole selection (every recipient and every user left out): held, or
        selected again from the store whole — for the lists that show them all."""
        if self.held is None:
            from smsops.domain.recipients import select_recipients
            from smsops.services import people

            assert self.source is not None
            acct = accounts.get_account(self.source)
            self.held = select_recipients(
                people.load_users(self.source),
                people.load_optouts(self.source),
                phone_field_enabled=acct.phone_field_enabled,
            )
        return self.held

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
    if not users_files and not query:
        return _from_store(ctx, acct, msgs, when)
    # A users file, or a --query (it reads every user's attributes): whole
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
    if not users_files:
        diagnosis = _with_inactive(ctx, diagnosis)
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
        completion=completion(ctx, acct, when, pairs=tickets_needed(recipients, len(msgs))),
        users=selection.users,
        held=selection,
    )


def _from_store(
    ctx: Context, acct: accounts.Account, msgs: list[Message], when: datetime | None
) -> Preview:
    """:func:`preview_bulk` of every active user, read and selected batch by batch (#12):
    what is kept is the counts and the first few numbers, never the whole selection."""
    from smsops.domain.phones import mask_phones
    from smsops.domain.recipients import RecipientStream
    from smsops.services import people
    from smsops.store import read

    stream = RecipientStream(people.load_optouts(ctx), phone_field_enabled=acct.phone_field_enabled)
    sample: list[str] = []
    with read(ctx.engine) as conn:
        for users in people.iter_users(conn, ctx.settings.write_batch):
            picked = stream.feed(users).recipients
            if len(sample) < SAMPLE:
                sample += mask_phones(picked["phone"].head(SAMPLE - len(sample))).tolist()
    return Preview(
        recipients=stream.recipients,
        messages=msgs,
        balance=accounts.balance(ctx),
        scheduled_at=when,
        timezone=acct.timezone,
        excluded=stream.counts(),
        diagnosis=_with_inactive(ctx, stream.diagnosis()),
        sample=sample,
        completion=completion(ctx, acct, when, pairs=tickets_needed(stream.recipients, len(msgs))),
        users=stream.users,
        source=ctx,
    )


def _with_inactive(ctx: Context, diagnosis: str) -> str:
    """R4, #11: say how many users a full export left out, when any."""
    from smsops.services import people

    if not (inactive := people.inactive_count(ctx)):
        return diagnosis
    return (
        f"{diagnosis}; {inactive:,} inactive user{'s' * (inactive != 1)} "
        "(not in the latest full export) not selected"
    )
