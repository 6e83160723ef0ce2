"""Time at the edges: aware datetimes only, the account's zone outside, UTC inside."""

from __future__ import annotations

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


def parse_at(text: str, tz: str, *, not_before: datetime | None = None) -> datetime:
    """Parse ``--at`` (ISO 8601, offset optional: then it is in ``tz``) to an aware UTC
    datetime; a time in the past is refused (R12).

    >>> parse_at("2099-12-01 10:00", "Asia/Tokyo").isoformat()
    '2099-12-01T01:00:00+00:00'
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleError(
            "R12", f"cannot read the send time {text!r}: use ISO 8601 such as 2026-12-01 10:00"
        ) from None
    if when.tzinfo is None:
        when = _local(when, tz, text)
    when = when.astimezone(UTC)
    current = not_before or now()
    if when <= current:
        raise ScheduleError(
            "R12",
            f"the send time {local_iso(when, tz)} is in the past (now {local_iso(current, tz)})",
        )
    return when


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
