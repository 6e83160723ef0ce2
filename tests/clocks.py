"""An injectable clock for a Context (#14): tests move it instead of waiting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    """Real time shifted by an offset the test sets: ``Clock(at)`` reads ``at`` now and
    goes on ticking from there; ``jump_to(t)`` reads ``t`` from this moment on. With
    ``frozen=True`` it does not tick (for decisions at one exact moment)."""

    def __init__(self, at: datetime, *, frozen: bool = False) -> None:
        self.frozen = frozen
        self.jump_to(at)

    def jump_to(self, at: datetime) -> None:
        self.offset = at - datetime.now(UTC)
        self.at = at

    def __call__(self) -> datetime:
        return self.at if self.frozen else datetime.now(UTC) + self.offset

    def shift(self, real: datetime) -> datetime:
        """What this clock read at the real time ``real`` (an outbox line's accepted_at)."""
        return real + self.offset


def jst(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A moment in Tokyo, as UTC."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC) - timedelta(hours=9)
