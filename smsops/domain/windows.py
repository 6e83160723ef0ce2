"""Sending windows (quiet hours, #11): the hours of each day, in the account's time zone,
when messages may leave — ``09:00-20:00`` keeps marketing SMS out of the night.

Pure: times in, times out. A window is half open: a message may leave at its start, not at
its end. An end at or before the start runs past midnight (``21:00-02:00``); ``24:00``
ends at midnight.

>>> w = Window.parse("09:00-20:00")
>>> from datetime import datetime, UTC
>>> w.contains(datetime(2026, 12, 1, 10, 59, 55, tzinfo=UTC), "Asia/Tokyo")  # 19:59:55 JST
True
>>> w.next_opening(datetime(2026, 12, 1, 11, 0, tzinfo=UTC), "Asia/Tokyo").isoformat()
'2026-12-02T00:00:00+00:00'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

_TEXT = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
# A chunk is sized to end this long before the window closes: the gateway's pace is kept
# by its rate limiter, and recording between groups takes a little time it catches up.
MARGIN = 1.0  # seconds


@dataclass(frozen=True)
class Window:
    """The daily hours messages may leave, ``start`` to ``end`` local wall time."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Window:
        """``HH:MM-HH:MM``; a ValueError says what is wrong with any other text."""
        m = _TEXT.fullmatch(text)
        if not m:
            raise ValueError(
                f"cannot read the sending window {text!r}: use HH:MM-HH:MM such as "
                "09:00-20:00, or off"
            )
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(
                f"the sending window {text.strip()!r} names a time that does not exist"
            )
        start, end = time(h1, m1), time(h2 % 24, m2)
        if start == end:
            raise ValueError(
                f"the sending window {text.strip()!r} is empty or the whole day: "
                "start and end must differ (off: no window)"
            )
        return cls(start, end)

    @classmethod
    def parse_stored(cls, text: str | None) -> Window | None:
        return None if text is None else cls.parse(text)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def _spans(self, moment: datetime, tz: str) -> Iterator[tuple[datetime, datetime]]:
        """The openings (UTC start, UTC end) around ``moment``, in order: the day before
        its local day through a few days after."""
        z = ZoneInfo(tz)
        day = moment.astimezone(z).date()
        for offset in range(-1, 4):
            d = day + timedelta(days=offset)
            opens = datetime.combine(d, self.start, tzinfo=z)
            ends_on = d + timedelta(days=1) if self.end <= self.start else d
            closes = datetime.combine(ends_on, self.end, tzinfo=z)
            yield opens.astimezone(UTC), closes.astimezone(UTC)

    def closes_at(self, moment: datetime, tz: str) -> datetime | None:
        """When the opening that holds ``moment`` closes; None when the window is shut."""
        return next((c for o, c in self._spans(moment, tz) if o <= moment < c), None)

    def contains(self, moment: datetime, tz: str) -> bool:
        return self.closes_at(moment, tz) is not None

    def next_opening(self, moment: datetime, tz: str) -> datetime:
        """The first opening after ``moment`` (UTC)."""
        return next(o for o, _ in self._spans(moment, tz) if o > moment)

    def earliest(self, moment: datetime, tz: str) -> datetime:
        """``moment`` itself when the window is open then, else its next opening."""
        return moment if self.contains(moment, tz) else self.next_opening(moment, tz)


def room(now: datetime, *, rate: float | None, window: Window | None, tz: str) -> int | None:
    """How many messages may start now at ``rate`` per second and all leave before the
    window closes (with :data:`MARGIN` to spare): None without a bound (no window, or no
    rate to judge by), 0 when the window is shut or about to close."""
    if window is None:
        return None
    closes = window.closes_at(now, tz)
    if closes is None:
        return 0
    if rate is None:
        return None
    return max(0, math.floor(((closes - now).total_seconds() - MARGIN) * rate))


@dataclass(frozen=True)
class Estimate:
    """When the last of ``pairs`` messages leaves at the rate cap, the window kept."""

    finish: datetime  # UTC
    unwindowed: datetime  # UTC: when it would if there were no window
    pauses: tuple[tuple[datetime, datetime], ...]  # (window closes, it reopens), in order


def estimate(
    start: datetime, pairs: int, rate: float, *, window: Window | None, tz: str
) -> Estimate | None:
    """The send as dispatch does it: from ``start`` (or the next opening), as many as fit
    before each close (:func:`room`), paused until the next opening, and so on. None when
    it would take more than a year of openings.

    >>> w = Window.parse("09:00-20:00")
    >>> at = datetime(2026, 12, 1, 10, 59, 55, tzinfo=UTC)  # 19:59:55 in Tokyo
    >>> e = estimate(at, 30_000, 500, window=w, tz="Asia/Tokyo")  # 2,000 before 20:00, rest after
    >>> e.finish.isoformat(), len(e.pauses)
    ('2026-12-02T00:00:56+00:00', 1)
    """
    seconds = pairs / rate
    unwindowed = start + timedelta(seconds=seconds)
    if window is None:
        return Estimate(unwindowed, unwindowed, ())
    t, left = window.earliest(start, tz), pairs
    pauses: list[tuple[datetime, datetime]] = []
    for _ in range(400):
        fit = room(t, rate=rate, window=window, tz=tz) or 0
        sent = min(left, fit)
        t += timedelta(seconds=sent / rate)
        left -= sent
        if not left:
            return Estimate(t, unwindowed, tuple(pauses))
        reopens = window.next_opening(t, tz)
        pauses.append((window.closes_at(t, tz) or t, reopens))
        t = reopens
    return None
