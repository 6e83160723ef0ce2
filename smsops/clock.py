"""Time at the edges: aware datetimes only, the account's zone outside, UTC inside."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from smsops.errors import InputError, Problem, ScheduleError


def now() -> datetime:
    return datetime.now(UTC)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(
            "--timezone", [Problem(None, None, f"unknown time zone {name!r}")]
        ) from None


# The latest send time: a time before it can be shown in every zone (offsets reach ±1
# day) without passing year 9999, the last one Python's datetime (and ISO 8601) writes.
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
# "99999-01-01", "+10000-01-01": a year of five digits or more, which fromisoformat refuses.
_HUGE_YEAR = re.compile(r"\s*\+?(\d{5,})-")


def send_time(at: str | None, tz: str, *, not_before: datetime | None = None) -> datetime | None:
    """R12: ``None`` sends now; any text, even an empty one, must be a send time (after
    ``not_before``, default now).

    An empty ``--at ""`` (an unset shell variable) is refused, never read as "now".
    """
    return None if at is None else parse_at(at, tz, not_before=not_before)


def parse_at(text: str, tz: str, *, not_before: datetime | None = None) -> datetime:
    """Parse ``--at`` (ISO 8601, offset optional: then it is in ``tz``) to an aware UTC
    datetime; an empty text, a time in the past or past :data:`LATEST` is refused (R12).

    >>> parse_at("2099-12-01 10:00", "Asia/Tokyo").isoformat()
    '2099-12-01T01:00:00+00:00'
    """
    if not text.strip():
        raise ScheduleError(
            "R12",
            "the send time is empty: give one such as 2026-12-01 10:00, or none to send now",
        )
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        if huge := _HUGE_YEAR.match(text):
            raise _too_far(int(huge.group(1))) from None
        raise ScheduleError(
            "R12", f"cannot read the send time {text!r}: use ISO 8601 such as 2026-12-01 10:00"
        ) from None
    try:
        if when.tzinfo is None:
            when = _local(when, tz, text)
        when = when.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or of year 9999
        when = datetime.min.replace(tzinfo=UTC) if when.year == 1 else LATEST
    if when >= LATEST:
        raise _too_far(when.year)
    current = not_before or now()
    if when <= current:
        shown = local_iso(when, tz) if when.year > 1 else repr(text)
        raise ScheduleError(
            "R12", f"the send time {shown} is in the past (now {local_iso(current, tz)})"
        )
    return when


def _too_far(year: int) -> ScheduleError:
    # The year, not the text: a date such as "9999-12-31 23:00" reads like a phone number
    # to the masking of error messages.
    return ScheduleError(
        "R12", f"the send time is too far ahead (year {year}): it must be before the year 9999"
    )


def _local(naive: datetime, tz: str, text: str) -> datetime:
    """``naive`` read in ``tz``; a wall time that daylight saving skips or repeats is
    refused rather than guessed (give an offset to say which)."""
    z = zone(tz)
    first, second = naive.replace(tzinfo=z, fold=0), naive.replace(tzinfo=z, fold=1)
    if first.astimezone(UTC).astimezone(z).replace(tzinfo=None) != naive:
        raise ScheduleError("R12", f"{text!r} does not exist in {tz} (the clocks skip it)")
    if first.utcoffset() != second.utcoffset():
        raise ScheduleError(
            "R12",
            f"{text!r} happens twice in {tz} (the clocks go back); add the offset, "
            f"e.g. {first.isoformat(timespec='minutes')} or {second.isoformat(timespec='minutes')}",
        )
    return first


def from_store(value: datetime | None) -> datetime | None:
    """Datetimes come back from SQLite naive; the store keeps UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def local_iso(value: datetime | None, tz: str) -> str | None:
    """ISO 8601 in the account's zone, with its offset: ``2026-12-01T10:00:00+09:00``."""
    value = from_store(value)
    return None if value is None else value.astimezone(zone(tz)).isoformat(timespec="seconds")
