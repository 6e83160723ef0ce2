"""The ``outbox`` gateway: appends one JSON line per accepted message to a file.

For trying smsops out and for tests. Safe with several processes (an exclusive lock
around each append) and after a crash (a torn last line is cut off when the file is next
opened; :meth:`accepted_keys` tells a resuming dispatcher what was already written).
Under ``SMSOPS_RATE_LIMIT`` it keeps the cap as a real gateway would, so a rehearsal takes
as long as the campaign will: lines are written as their turns come, a twentieth of a
second's worth at a time.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from smsops.gateways.pacing import shared_limiter


class OutboxGateway:
    name = "outbox"

    def __init__(self, path: Path | str, rate_limit: float | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._limiter = (
            shared_limiter(("outbox", str(self.path.resolve())), rate_limit) if rate_limit else None
        )

    def __repr__(self) -> str:
        cap = f"{self._limiter.rate:g}/s" if self._limiter else "none"
        return f"OutboxGateway(path={str(self.path)!r}, rate_limit={cap})"

    def send(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self._limiter is None or batch.empty:
            self._append(batch)
        else:
            step = max(1, math.ceil(self._limiter.rate / 20))
            for start in range(0, len(batch), step):
                group = batch.iloc[start : start + step]
                for _ in range(len(group)):
                    self._limiter.wait()
                self._append(group)
        return pd.DataFrame(
            {
                "idempotency_key": batch["idempotency_key"].to_numpy(),
                "status": "sent",
                "error": None,
                "gateway_ref": None,
            }
        )

    def _append(self, batch: pd.DataFrame) -> None:
        accepted_at = datetime.now(UTC).isoformat()
        lines = pd.DataFrame(
            {
                "delivery_id": batch["delivery_id"].astype("int64"),
                "phone": batch["phone"].astype(str),
                "message_no": batch["message_no"].astype("int64"),
                "text": batch["text"].astype(str),
                "idempotency_key": batch["idempotency_key"].astype(str),
                "accepted_at": accepted_at,
            }
        ).to_json(orient="records", lines=True, force_ascii=False)
        payload = lines.encode("utf-8")
        if payload and not payload.endswith(b"\n"):
            payload += b"\n"
        with self._locked():
            os.write(self._fd, payload)
            os.fsync(self._fd)

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
