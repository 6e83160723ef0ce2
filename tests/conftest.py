"""Shared fixtures: a fresh smsops installation (SQLite file + outbox) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smsops.services.context import Context
from smsops.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'smsops.db'}",
        outbox=tmp_path / "outbox.jsonl",
        chunk_size=7,  # small, so that every test crosses chunk boundaries
    )


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    context = Context.open(settings)
    yield context
    context.close()
