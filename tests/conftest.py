"""Shared fixtures: a fresh smsops installation per test, on SQLite and on PostgreSQL.

Tests that take ``settings``/``ctx`` run on both stores; ``sqlite_settings`` pins one.
PostgreSQL comes from a throwaway server (tests/pg.py) started once per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import create_database, pg_bin, postgres_server

from smsops.services.context import Context
from smsops.settings import Settings


@pytest.fixture(autouse=True)
def english(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests read English unless they ask for Japanese (#15): a developer whose locale
    is ja_JP.UTF-8 runs the same suite. Tests of Japanese set SMSOPS_LANG=ja themselves."""
    monkeypatch.setenv("SMSOPS_LANG", "en")


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_admin: str) -> str:
    return create_database(postgres_admin)


def _settings(url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=url,
        outbox=tmp_path / "outbox.jsonl",
        chunk_size=7,  # small, so that every test crosses chunk boundaries
    )


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "postgres":
        return _settings(request.getfixturevalue("postgres_url"), tmp_path)
    return _settings(f"sqlite:///{tmp_path / 'smsops.db'}", tmp_path)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return _settings(f"sqlite:///{tmp_path / 'smsops.db'}", tmp_path)


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    context = Context.open(settings)
    yield context
    context.close()


@pytest.fixture
def cli(tmp_path: Path):
    """The ``smsops`` command line in this process, on a fresh SQLite store and outbox:
    ``cli(*args, code=0)`` runs it, checks the exit code and that it printed no traceback
    (nor an "unexpected" error, unless ``unexpected_ok``), and returns the result."""
    from typer.testing import CliRunner

    from smsops.cli import app

    runner = CliRunner()
    env = {
        "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}",
        "SMSOPS_OUTBOX": str(tmp_path / "outbox.jsonl"),
        "SMSOPS_CHUNK_SIZE": "3",
    }

    def run(*args: str, code: int = 0, input: str | None = None, unexpected_ok: bool = False):
        result = runner.invoke(app, list(args), env=env, input=input, prog_name="smsops")
        assert result.exit_code == code, (args, result.output, result.exception)
        assert "Traceback" not in result.output
        assert unexpected_ok or "smsops: unexpected" not in result.output
        return result

    run.env = env  # type: ignore[attr-defined]
    run.tmp = tmp_path  # type: ignore[attr-defined]
    return run
