"""The import-drops flow (#11), with Prefect's test harness (a temporary local API)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prefect.artifacts import Artifact
from prefect.testing.utilities import prefect_test_harness
from support import mobile

from smsops.errors import PathError
from smsops.services import people
from smsops.services.context import Context
from smsops.settings import Settings

HOUR_AGO = time.time() - 3600


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def env(tmp_path: Path, monkeypatch) -> Settings:
    monkeypatch.setenv("SMSOPS_DATABASE_URL", f"sqlite:///{tmp_path / 'smsops.db'}")
    monkeypatch.setenv("SMSOPS_OUTBOX", str(tmp_path / "outbox.jsonl"))
    monkeypatch.setenv("SMSOPS_IMPORT_ROOT", str(tmp_path))
    monkeypatch.setenv("SMSOPS_DROPS", str(tmp_path / "drops"))
    return Settings()


def drop(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    os.utime(folder / name, (HOUR_AGO, HOUR_AGO))


def test_issue11_import_drops_flow_imports_moves_and_publishes_the_rejected_rows(env, tmp_path):
    from flows.campaigns import import_drops

    inbox = tmp_path / "drops"
    drop(inbox, "a.csv", f"user_id,phone\nu1,{mobile(1)}\nu2,{mobile(2)}\n")
    drop(inbox, "b.csv", f"user_id,phone\n,{mobile(3)}\nu4,9.01234E+09\n")
    drop(inbox / "optouts", "stop.csv", f"phone\n{mobile(2)}\n")

    result = import_drops()

    assert result["counts"] == {
        "imported": 2,
        "rejected": 1,
        "skipped_duplicate": 0,
        "still_being_written": 0,
    }
    assert (inbox / "processed" / "a.csv").exists()
    assert (inbox / "optouts" / "processed" / "stop.csv").exists()
    assert (inbox / "rejected" / "b.csv.errors.csv").exists()
    ctx = Context.open(env)
    assert people.users_count(ctx) == 2 and people.optout_count(ctx) == 1
    rows = json.loads(Artifact.get("drop-rejected-rows").data)
    assert [(r["file"], r["row"], r["column"]) for r in rows] == [
        ("b.csv", 1, "user_id"),
        ("b.csv", 2, "phone"),
    ]
    assert mobile(3) not in json.dumps(rows, ensure_ascii=False)
    passed = json.loads(Artifact.get("drop-folder-pass").data)
    assert {r["name"]: r["outcome"] for r in passed} == {
        "a.csv": "imported",
        "b.csv": "rejected",
        "stop.csv": "imported",
    }


def test_issue11_import_drops_flow_creates_the_configured_folder(env, tmp_path):
    from flows.campaigns import import_drops

    assert import_drops()["files"] == []
    assert (tmp_path / "drops").is_dir()


@pytest.mark.parametrize("folder", ["/etc", "memory://elsewhere", "../outside"])
def test_threat_import_drops_flow_watches_no_folder_outside_the_import_root(env, folder):
    from flows.campaigns import import_drops

    with pytest.raises(PathError):
        import_drops(folder=folder)
