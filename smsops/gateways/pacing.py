"""The send-rate cap (``SMSOPS_RATE_LIMIT``), shared by every gateway of a process."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

# Over a second by this much: a message that reaches the wire a little later than its
# predecessor (the OS took the CPU in between) still keeps to the cap there.
_MARGIN = 0.005


class RateLimiter:
    """At most ``rate`` sends in any 1-second window, spread out.

    Decided on the times sends really start (not on slots booked in advance, which a
    stalled event loop would release in a burst): a send waits until the one
    ``floor(rate)`` places back is a second old — the cap — and the previous one is
    ``0.8/rate`` old — no bursts; the slack absorbs timers that wake late, so the cap is
    reached but never passed. Thread-safe, so one limiter serves every gateway of a
    process (back-to-back deliveries included).

    A gateway that puts a group on the wire at once (the outbox writes a twentieth of a
    second's worth in one write) takes the group's turns together: it waits only for the
    cap, so time spent recording between groups or chunks is caught up in the next second
    instead of lost.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        self.rate = rate
        self.interval = 0.8 / rate
        self.window = max(1, math.floor(rate))
        self._clock = clock
        self._starts: deque[float] = deque(maxlen=self.window)
        self._lock = threading.Lock()

    def _try(self, n: int = 1) -> float:
        """Take ``n`` sends now if allowed (return 0), else return how long to wait."""
        n = min(n, self.window)
        with self._lock:
            now = self._clock()
            ready = now
            if self._starts:
                ready = self._starts[-1] + self.interval
                # the send ``window`` places before the last of ours must be a second old
                back = self.window - n + 1
                if len(self._starts) >= back:
                    ready = max(ready, self._starts[-back] + 1.0 + _MARGIN)
            if ready <= now:
                self._starts.extend([now] * n)
                return 0.0
            return ready - now

    async def acquire(self) -> None:
        """Wait for one send's turn, in an event loop."""
        while (wait := self._try()) > 0:
            await asyncio.sleep(wait)

    def wait(self, n: int = 1) -> None:
        """Wait for the turn of ``n`` sends that go out together, blocking the thread."""
        while n > 0:
            group = min(n, self.window)
            while (wait := self._try(group)) > 0:
                time.sleep(wait)
            n -= group


_limiters: dict[tuple[Hashable, float], RateLimiter] = {}
_limiters_lock = threading.Lock()


def shared_limiter(account: Hashable, rate: float) -> RateLimiter:
    """The process-wide limiter for one gateway account (the cap holds across deliveries;
    several processes each get their own)."""
    with _limiters_lock:
        return _limiters.setdefault((account, rate), RateLimiter(rate))
