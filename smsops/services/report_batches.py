"""Delivery reports written in batches (#12): callers hand reports to one writer thread,
which takes what has piled up (waiting at most ``linger`` seconds for more, at most
``max_batch`` reports) and records them in one transaction
(:func:`smsops.services.inbound.record_dlrs`). Each caller gets its answer only once the
transaction that holds its report has committed; if the transaction fails, every caller
of the batch gets :class:`BatchFailed`, and none of its reports is recorded.

Why: reports come back at the rate messages go out. One transaction each means one
commit each, and on SQLite every writer queuing for the write lock (its busy handler
sleeps between tries); one writer, one commit per batch, keeps up with Kannel.

>>> batcher = ReportBatcher()  # doctest: +SKIP
>>> batcher.record(ctx, inbound.parse_dlr("smsops-1-1-1", 1))  # doctest: +SKIP
DlrResult(key='smsops-1-1-1', dlr_status='delivered', recorded=True)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from smsops.errors import BatchFailed, SmsopsError  # BatchFailed importable here too
from smsops.services import inbound
from smsops.services.context import Context
from smsops.store.engine import StoreUnavailable

log = logging.getLogger(__name__)

# Reports in one transaction at most. The receiver handles 16 connections at once, so a
# batch seldom holds more; the cap bounds a transaction when several receivers share a
# batcher or a caller submits from many threads.
MAX_BATCH = 256
# How long the writer waits for more reports once it has one, when fewer than
# ``max_batch`` are waiting: a little latency for fewer, larger commits.
LINGER = 0.002
# A caller gives up waiting this long beyond the store's busy timeout (its report may
# still be recorded: an answer that is not 2xx only makes Kannel send it again).
WAIT_MARGIN = 30.0


@dataclass(eq=False)
class _Pending:
    ctx: Context
    report: inbound.DlrReport
    done: threading.Event = field(default_factory=threading.Event)
    outcome: inbound.DlrResult | SmsopsError | BatchFailed | None = None


@dataclass
class BatchStats:
    """What the writer has done so far (for tests and benchmarks)."""

    batches: int = 0
    reports: int = 0
    failed_batches: int = 0
    largest: int = 0


class ReportBatcher:
    """One writer thread that records delivery reports in batches; :meth:`record` blocks
    until its report's transaction has committed (or failed). Thread-safe; started on
    first use, stopped by :meth:`close` (which records what is already queued)."""

    def __init__(self, *, max_batch: int = MAX_BATCH, linger: float = LINGER) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if linger < 0:
            raise ValueError("linger must not be negative")
        self.max_batch = max_batch
        self.linger = linger
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _thread and _closed against record()
        self._thread: threading.Thread | None = None
        self._closed = False

    def record(self, ctx: Context, report: inbound.DlrReport) -> inbound.DlrResult:
        """Record ``report`` in ``ctx``'s store with the next batch; return once that
        batch has committed. Raises the report's own refusal (``ReportRefused``,
        ``NotFoundError``: the rest of its batch is recorded all the same), or
        :class:`BatchFailed` when its batch was not recorded."""
        pending = _Pending(ctx, report)
        with self._lock:
            if self._closed:
                raise BatchFailed("the receiver is stopping", unavailable=True)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="smsops-dlr-writer", daemon=True
                )
                self._thread.start()
            self._queue.put(pending)
        if not pending.done.wait(ctx.settings.busy_timeout + WAIT_MARGIN):
            raise BatchFailed("timed out waiting for the store", unavailable=True)
        if isinstance(pending.outcome, SmsopsError | BatchFailed):
            raise pending.outcome
        assert pending.outcome is not None
        return pending.outcome

    def close(self) -> None:
        """Record what is queued, then stop the writer; later :meth:`record` calls fail."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.linger
            while len(batch) < self.max_batch:
                try:
                    left = deadline - time.monotonic()
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        # One transaction per store: a receiver's context may be swapped while it runs.
        by_store: dict[int, list[_Pending]] = {}
        for pending in batch:
            by_store.setdefault(id(pending.ctx), []).append(pending)
        for group in by_store.values():
            try:
                outcomes = inbound.record_dlrs(group[0].ctx, [p.report for p in group])
            except StoreUnavailable as exc:
                log.warning("dlr: a batch of %d reports was not recorded: %s", len(group), exc)
                self._settle(group, None, BatchFailed(exc.message, unavailable=True))
            except Exception as exc:  # any failure: nothing of the batch was committed
                log.exception("dlr: a batch of %d reports was not recorded", len(group))
                self._settle(group, None, BatchFailed(f"store error ({type(exc).__name__})"))
            else:
                self._settle(group, outcomes, None)

    def _settle(
        self,
        group: list[_Pending],
        outcomes: list[inbound.DlrResult | SmsopsError] | None,
        failure: BatchFailed | None,
    ) -> None:
        stats = self.stats
        stats.batches += 1
        stats.reports += len(group)
        stats.largest = max(stats.largest, len(group))
        stats.failed_batches += failure is not None
        for i, pending in enumerate(group):
            if outcomes is not None:
                pending.outcome = outcomes[i]
            elif failure is not None:  # one each: raised from as many threads
                pending.outcome = BatchFailed(failure.message, unavailable=failure.unavailable)
            pending.done.set()
