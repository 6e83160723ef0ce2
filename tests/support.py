"""Helpers for tests: numbers, users, the outbox."""

from __future__ import annotations

import json

import pandas as pd

from smsops.services.context import Context
from smsops.services.people import upsert_users


def mobile(i: int) -> str:
    """The i-th distinct allocated mobile number, written as users type it."""
    return f"090-{1000 + i // 10000:04d}-{i % 10000:04d}"


def e164(i: int) -> str:
    return f"+8190{1000 + i // 10000:04d}{i % 10000:04d}"


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
