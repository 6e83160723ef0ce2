"""``smsops users watch DIR`` (#11): the drop folder through the command line."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import mobile

HOUR_AGO = time.time() - 3600


def members(ids: list[int]) -> bytes:
    lines = ["会員ID,氏名,携帯電話番号"] + [f"m{i},山田{i},{mobile(i)}" for i in ids]
    return ("\r\n".join(lines) + "\r\n").encode("cp932")


def drop(folder: Path, name: str, data: bytes, *, whole: bool = True) -> Path:
    """A file that arrived an hour ago, or (not whole) one that has just changed."""
    path = folder / name
    path.write_bytes(data)
    if whole:
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    return path


def test_issue11_users_watch_five_files_in_one_pass(cli):
    """The must-show through the CLI: one `smsops users watch --mode replace` over a good
    CP932 export, a file with two bad rows, a half-written file, the first file again
    and a full export; exit 0 although a file was rejected, and it says so."""
    inbox = cli.tmp / "drops"
    inbox.mkdir()
    drop(inbox, "1_members.csv", members([1, 2, 3, 4]))
    bad = f"user_id,phone\ns1,{mobile(20)}\n,{mobile(21)}\ns3,9.01234E+09\n".encode()
    drop(inbox, "2_signups.csv", bad)
    half = drop(inbox, "3_tonight.csv", members([1, 2, 5, 6])[:25], whole=False)
    drop(inbox, "4_members_again.csv", members([1, 2, 3, 4]))
    drop(inbox, "5_full.csv", members([1, 2, 5]))

    shown = cli("users", "watch", str(inbox), "--mode", "replace")
    assert "2 imported, 1 rejected, 1 skipped (duplicate), 1 still being written" in shown.stdout
    assert "rejected/*.errors.csv" in shown.stdout
    assert "2_signups.csv" in shown.stdout and "still being written" in shown.stdout

    assert sorted(p.name for p in (inbox / "processed").iterdir()) == [
        "1_members.csv",
        "4_members_again.csv",
        "5_full.csv",
    ]
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == [
        "2_signups.csv",
        "2_signups.csv.errors.csv",
    ]
    errors = list(
        csv.DictReader(
            io.StringIO(
                (inbox / "rejected" / "2_signups.csv.errors.csv").read_text(encoding="utf-8-sig")
            )
        )
    )
    assert [(e["row"], e["line"], e["column"]) for e in errors] == [
        ("2", "3", "user_id"),
        ("3", "4", "phone"),
    ]
    assert half.exists()

    # inactive users (m3, m4: not in the full export) are not selected, and counted
    preview = json.loads(cli("bulk", "preview", "-m", "hi", "--json").stdout)
    assert preview["recipients"] == 3
    assert "2 inactive users" in preview["diagnosis"]

    # a later pass: tonight's export is whole now (its writer finished a while ago)
    drop(inbox, "3_tonight.csv", members([1, 2, 5, 6]))
    later = json.loads(cli("users", "watch", str(inbox), "--mode", "replace", "--json").stdout)
    assert [(f["name"], f["outcome"], f["rows"]) for f in later["files"]] == [
        ("3_tonight.csv", "imported", 4)
    ]
    assert later["counts"]["imported"] == 1
    preview = json.loads(cli("bulk", "preview", "-m", "hi", "--json").stdout)
    assert preview["recipients"] == 4  # m1, m2, m5, m6
    assert not [p for p in inbox.iterdir() if p.is_file()]


def test_issue11_users_watch_bad_folder_exits_1_with_one_line(cli):
    for folder in (str(cli.tmp / "missing"), "nope://drops"):
        result = cli("users", "watch", folder, code=1)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "drop folder" in result.stderr
    doc = json.loads(cli("users", "watch", str(cli.tmp / "missing"), "--json", code=1).stdout)
    assert doc["error"] == "input"
    cli("users", "watch", str(cli.tmp), "--mode", "merge", code=2)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_issue11_users_watch_every_keeps_going_until_interrupted(tmp_path, stop):
    """--every: one JSON document per pass; a file dropped between passes is imported by
    the next; Ctrl-C or SIGTERM ends it cleanly after the pass under way (exit 0). A real
    process: the test waits for its output lines, not for the clock."""
    inbox = tmp_path / "drops"
    inbox.mkdir()
    drop(inbox, "a.csv", members([1]))
    env = {
        **os.environ,
        "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}",
        "SMSOPS_OUTBOX": str(tmp_path / "outbox.jsonl"),
    }
    command = [sys.executable, "-m", "smsops.cli", "users", "watch", str(inbox)]
    proc = subprocess.Popen(
        [*command, "--every", "1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert [f["outcome"] for f in first["files"]] == ["imported"]
        drop(inbox, "b.csv", members([2]))
        while True:  # each pass prints one document; b.csv is taken by one of them
            doc = json.loads(proc.stdout.readline())
            if doc["files"]:
                break
        assert [(f["name"], f["outcome"]) for f in doc["files"]] == [("b.csv", "imported")]
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0  # the pass under way finished, then it stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["a.csv", "b.csv"]
