"""When a delivery's last message leaves (#11): at the rate cap (``SMSOPS_RATE_LIMIT``),
the sending window kept, and what to warn about — a send time outside the window, a send
that does not fit in it, one that runs into the next scheduled delivery."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from smsops import clock, i18n
from smsops.domain import windows
from smsops.domain.vocabulary import DeliveryStatus
from smsops.errors import ScheduleError
from smsops.services import account as accounts
from smsops.services.context import Context
from smsops.store import read
from smsops.store.schema import deliveries


@dataclass(frozen=True)
class Completion:
    """The estimate a preview shows: ``finish`` None without a rate cap to judge by."""

    finish: datetime | None  # UTC
    rate: float | None  # messages per second
    window: str | None
    warnings: list[str] = field(default_factory=list)  # English lines; localize to show


def completion(
    ctx: Context, acct: accounts.Account, when: datetime | None, *, pairs: int
) -> Completion:
    """When the last of ``pairs`` messages sent from ``when`` (None: now) would leave, as
    dispatch sends them (:func:`smsops.domain.windows.estimate`), with its warnings."""
    now = ctx.clock()
    start = when or now
    rate, window, tz = ctx.settings.rate_limit, acct.sending_window, acct.timezone
    warnings = []
    try:
        accounts.require_window(acct, when, now)
    except ScheduleError as refused:  # creating it would be refused: say so now
        warnings.append(refused.message)
    if rate is None or pairs == 0:
        return Completion(None, rate, acct.window, warnings)
    guess = windows.estimate(start, pairs, rate, window=window, tz=tz)
    if guess is None:
        return Completion(None, rate, acct.window, warnings)
    if guess.pauses and window is not None:
        closes, opens = guess.pauses[0]
        text = (
            f"at {rate:g} messages/s it does not fit in the sending window {window}: it "
            f"pauses at {clock.local_iso(closes, tz)} and goes on at {clock.local_iso(opens, tz)}"
        )
        if len(guess.pauses) > 1:
            text += f"; {len(guess.pauses)} pauses in all"
        warnings.append(text)
    with read(ctx.engine) as conn:
        following = conn.execute(
            select(deliveries.c.id, deliveries.c.scheduled_at)
            .where(
                deliveries.c.status == DeliveryStatus.SCHEDULED,
                deliveries.c.scheduled_at > start,
            )
            .order_by(deliveries.c.scheduled_at, deliveries.c.id)
            .limit(1)
        ).first()
    if following is not None:
        starts = clock.from_store(following.scheduled_at)
        if starts is not None and guess.finish > starts:
            warnings.append(
                f"the last message leaves after delivery {following.id} is due to start "
                f"({clock.local_iso(starts, tz)})"
            )
    return Completion(guess.finish, rate, acct.window, warnings)


def last_message(c: Completion, tz: str) -> str:
    """When the last message leaves, as the reader writes it (#15)."""
    if c.finish is None:
        return i18n._("as fast as the gateway takes them (no rate cap: SMSOPS_RATE_LIMIT)")
    return i18n._("{at} at {rate} messages/s").format(
        at=i18n.when(c.finish, tz), rate=f"{c.rate:g}"
    )


def warning_lines(c: Completion) -> list[str]:
    """The warnings in the reader's language."""
    from smsops.refusals import localize

    return [localize(w) for w in c.warnings]
