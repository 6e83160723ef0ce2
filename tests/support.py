"""Helpers for tests: numbers, users, the outbox."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from smsops.gateways.outbox import OutboxGateway
from smsops.services.context import Context
from smsops.services.people import upsert_users


def mobile(i: int) -> str:
    """The i-th distinct allocated mobile number, written as users type it."""
    return f"090-{1000 + i // 10000:04d}-{i % 10000:04d}"


def e164(i: int) -> str:
    return f"+8190{1000 + i // 10000:04d}{i % 10000:04d}"


def users_csv(tmp: Path, phones: list[str], name: str = "users.csv", encoding="utf-8") -> Path:
    """A user table as Excel writes it (CRLF), one user per number: u1, u2, … with a name."""
    path = tmp / name
    lines = ["user_id,phone,氏名"] + [f"u{i},{p},山田{i}" for i, p in enumerate(phones, 1)]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    return path


def add_users(ctx: Context, phones: list[str | None], prefix: str = "u") -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user_id": [f"{prefix}{i}" for i in range(1, len(phones) + 1)],
            "phone": pd.Series(phones, dtype="string[pyarrow]"),
            "name": [f"山田{i}" for i in range(1, len(phones) + 1)],
        }
    )
    upsert_users(ctx, frame)
    return frame


def outbox(ctx: Context) -> list[dict]:
    path = ctx.settings.outbox
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class RefusingOutbox(OutboxGateway):
    """The outbox gateway, except that the carrier refuses the messages ``refuse`` picks
    (a fake of a provider's rejections; the accepted ones really go to the outbox)."""

    def __init__(self, path, refuse, error: str = "rejected_by_carrier") -> None:
        super().__init__(path)
        self.refuse, self.error = refuse, error

    def send(self, batch: pd.DataFrame, hand_off=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        if hand_off is not None:  # the whole batch goes out at once
            hand_off(len(batch), [])
        bad = self.refuse(batch).to_numpy(dtype=bool)
        refused = pd.DataFrame(
            {
                "idempotency_key": batch.loc[bad, "idempotency_key"].to_numpy(),
                "status": "error",
                "error": self.error,
                "gateway_ref": None,
            }
        )
        return pd.concat([super().send(batch[~bad]), refused], ignore_index=True)
