"""The ``outbox`` gateway: appends one JSON line per accepted message to a file.

For trying smsops out and for tests. Safe with several processes (an exclusive lock
around each append) and after a crash (a torn last line is cut off when the file is next
opened; :meth:`accepted_keys` tells a resuming dispatcher what was already written).
Like a provider with idempotency keys (Stripe's model), it never writes a key twice: a
message whose key another process already wrote gets that first result, so a sender that
was frozen past its lease and wakes up cannot duplicate what its successor sent. A line
counts only once it is wholly on disk: a short write or a full disk (``ENOSPC``, a
file-size limit) cuts the group's partial lines off again and raises
:class:`~smsops.errors.GatewayError`, so no message is recorded ``sent`` without its line.
Under ``SMSOPS_RATE_LIMIT`` it keeps the cap as a real gateway would, so a rehearsal takes
as long as the campaign will: lines are written as their turns come, a twentieth of a
second's worth at a time.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import socket
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from smsops.domain.vocabulary import ItemStatus
from smsops.errors import ConfigError, GatewayError, Text, os_reason
from smsops.gateways import Answer, HandOff
from smsops.gateways.pacing import shared_limiter
from smsops.i18n import N_

_KEY = re.compile(rb'"idempotency_key":"([^"]+)"')


class OutboxGateway:
    name = "outbox"

    def __init__(self, path: Path | str, rate_limit: float | None = None) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where the folder should be, no permission, …
            raise ConfigError(
                Text(
                    N_("SMSOPS_OUTBOX {path}: cannot make its folder {folder}: {detail}"),
                    path=str(self.path),
                    folder=str(self.path.parent),
                    detail=os_reason(exc),
                )
            ) from None
        self.record: str | None = f"outbox:{socket.gethostname()}:{self.path.resolve()}"
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                Text(
                    N_("SMSOPS_OUTBOX {path}: cannot open it for writing: {detail}"),
                    path=str(self.path),
                    detail=os_reason(exc),
                )
            ) from None
        self._limiter = (
            shared_limiter(("outbox", str(self.path.resolve())), rate_limit) if rate_limit else None
        )
        self._seen = 0  # bytes of the file this process has read or written
        self._held: set[str] = set()  # keys found in the file (written by other processes)

    def __repr__(self) -> str:
        cap = f"{self._limiter.rate:g}/s" if self._limiter else "none"
        return f"OutboxGateway(path={str(self.path)!r}, rate_limit={cap})"

    def send(self, batch: pd.DataFrame, hand_off: HandOff | None = None) -> pd.DataFrame:
        """Append each message as one line; under a rate cap, a twentieth of a second's
        worth at a time, each group announced to ``hand_off`` before it is written, with
        the group before it as answered (its lines are on disk): after a crash only the
        last group is in doubt to a resume that cannot read this outbox."""
        step = len(batch) if self._limiter is None else max(1, math.ceil(self._limiter.rate / 20))
        written: pd.DataFrame | None = None  # the group before: on disk, so answered
        for start in range(0, len(batch), max(step, 1)):
            group = batch.iloc[start : start + step]
            if hand_off is not None:
                answered: list[Answer] = (
                    []
                    if written is None
                    else [(str(k), ItemStatus.SENT, None) for k in written["idempotency_key"]]
                )
                hand_off(start + len(group), answered)
            if self._limiter is not None:
                self._limiter.wait(len(group))  # they go out in one write
            self._append(group)
            written = group
        return pd.DataFrame(
            {
                "idempotency_key": batch["idempotency_key"].to_numpy(),
                "status": ItemStatus.SENT,
                "error": None,
                "gateway_ref": None,
            }
        )

    def _append(self, batch: pd.DataFrame) -> None:
        with self._locked():
            self._catch_up()
            # the batch's keys against the held set, not the set against the batch:
            # the set grows with the file (every key any process wrote to it)
            held = self._held
            fresh = batch
            if held:  # usually empty: only keys other processes wrote are held
                fresh_rows = [str(k) not in held for k in batch["idempotency_key"]]
                fresh = batch if all(fresh_rows) else batch[fresh_rows]
            if fresh.empty:
                return
            self._write(_lines(fresh))
            self._seen = os.fstat(self._fd).st_size

    def _catch_up(self) -> None:
        """Learn the keys other processes wrote since this one last looked."""
        size = os.fstat(self._fd).st_size
        if size < self._seen:  # the file was cut back or replaced: read it all again
            self._seen, self._held = 0, set()
        while self._seen < size:
            data = os.pread(self._fd, min(size - self._seen, 1 << 24), self._seen)
            end = data.rfind(b"\n") + 1 if len(data) < size - self._seen else len(data)
            self._held.update(k.decode() for k in _KEY.findall(data[:end]))
            self._seen += end or len(data)

    def _write(self, payload: bytes) -> None:
        """All of ``payload`` on disk (written and fsynced), or none of it and one clear
        GatewayError: a short write is continued, and a failed one cut back off."""
        before = os.fstat(self._fd).st_size
        view = memoryview(payload)
        try:
            while view:
                n = os.write(self._fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, before)
                os.fsync(self._fd)
            except OSError:
                pass  # the next lock cuts a torn line off in any case
            full = exc.errno in (errno.ENOSPC, errno.EFBIG)
            raise GatewayError(
                Text(
                    N_(
                        "outbox {path}: {reason} ({detail}); the messages not yet written "
                        "stay pending: free space, then run `smsops dispatch-due`"
                    ),
                    path=str(self.path),
                    reason=Text(N_("the disk is full")) if full else str(exc),
                    detail=os_reason(exc),
                )
            ) from None

    def accepted_keys(self, delivery_id: int) -> set[str]:
        with self._locked(), open(self.path, encoding="utf-8") as fh:
            prefix = f"smsops-{delivery_id}-"
            keys = set()
            for line in fh:
                if prefix in line:
                    record = json.loads(line)
                    if record.get("delivery_id") == delivery_id:
                        keys.add(record["idempotency_key"])
            return keys

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _locked(self) -> _Lock:
        return _Lock(self._fd)


def _lines(batch: pd.DataFrame) -> bytes:
    """One JSON line per message (the outbox line of DESIGN.md)."""
    at = np.full(len(batch), datetime.now(UTC).isoformat(), dtype=object)
    text = pd.DataFrame(
        {
            "delivery_id": batch["delivery_id"].to_numpy(dtype="int64"),
            "phone": _strings(batch["phone"]),
            "message_no": batch["message_no"].to_numpy(dtype="int64"),
            "text": _strings(batch["text"]),
            "idempotency_key": _strings(batch["idempotency_key"]),
            "accepted_at": pd.Series(at, dtype=object),
        }
    ).to_json(orient="records", lines=True, force_ascii=False)
    payload = text.encode("utf-8")
    return payload if payload.endswith(b"\n") or not payload else payload + b"\n"


def _strings(column: pd.Series) -> pd.Series:
    """A column as Python strings (object dtype, positional), which to_json writes as they
    are: ``astype(str)`` would make pandas' Arrow strings, which to_json converts back one
    by one (#12). Values that are not all strings are made text, as astype(str) does."""
    values = column.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=False) != "string":
        values = column.astype(str).to_numpy(dtype=object)
    return pd.Series(values, dtype=object)


class _Lock:
    """An exclusive lock on the outbox; on taking it, cut off a torn last line left by
    a writer that died mid-append."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        size = os.fstat(self.fd).st_size
        if size and os.pread(self.fd, 1, size - 1) != b"\n":
            chunk = min(size, 1 << 20)
            tail = os.pread(self.fd, chunk, size - chunk)
            cut = tail.rfind(b"\n")
            os.ftruncate(self.fd, size - chunk + cut + 1 if cut >= 0 else size - chunk)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
