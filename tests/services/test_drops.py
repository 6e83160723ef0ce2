"""The drop folder (#11): files imported whole or not at all, one at a time, then moved;
duplicates skipped by content; half-written files left alone; ``replace`` mode marks the
users a full export no longer holds inactive, and they are never selected (R4)."""

from __future__ import annotations

import csv
import io
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import fsspec
import pytest
from support import e164, mobile

from smsops import clock
from smsops.errors import InputError
from smsops.services import deliveries as dl
from smsops.services import drops, people
from smsops.store import read

HOUR_AGO = time.time() - 3600


def members(ids: list[int]) -> bytes:
    """A member export as Excel saves it on Japanese Windows: CP932, Japanese headers."""
    lines = ["会員ID,氏名,携帯電話番号"] + [f"m{i},山田{i},{mobile(i)}" for i in ids]
    return ("\r\n".join(lines) + "\r\n").encode("cp932")


BAD = (
    "user_id,phone\n"
    f"s1,{mobile(20)}\n"
    f",{mobile(21)}\n"  # row 2: no user_id
    "s3,9.01234E+09\n"  # row 3: a number Excel turned into a float
    f"s4,{mobile(23)}\n"
).encode()


def drop(folder: Path, name: str, data: bytes, *, whole: bool = True) -> Path:
    """Put a file in the drop folder; a whole one arrived an hour ago, a file still being
    written has just changed."""
    path = folder / name
    path.write_bytes(data)
    if whole:
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    return path


def read_errors(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """An empty drop folder (beside the test's database, not around it)."""
    folder = tmp_path / "drops"
    folder.mkdir()
    return folder


def users_table(ctx) -> dict[str, bool]:
    with read(ctx.engine) as conn:
        rows = conn.exec_driver_sql("SELECT user_id, active FROM users ORDER BY pos").all()
    return {r[0]: bool(r[1]) for r in rows}


def test_issue11_five_files_one_pass(ctx, tmp_path):
    """The issue's must-show, through the service on both stores: a good CP932 export, a
    file with two bad rows, the first file again, a full export in replace mode, and
    tonight's export still being written."""
    inbox = tmp_path / "drops"
    inbox.mkdir()
    drop(inbox, "1_members.csv", members([1, 2, 3, 4]))
    drop(inbox, "2_signups.csv", BAD)
    drop(inbox, "3_members_copy.csv", members([1, 2, 3, 4]))
    drop(inbox, "4_full.csv", members([1, 2, 5]))
    half = drop(inbox, "5_tonight.csv", members([1, 2, 5, 6])[:30], whole=False)

    done = drops.watch(ctx, str(inbox), mode="replace")

    outcome = {f.name: f.outcome.value for f in done.files}
    assert outcome == {
        "1_members.csv": "imported",
        "2_signups.csv": "rejected",
        "3_members_copy.csv": "skipped_duplicate",
        "4_full.csv": "imported",
        "5_tonight.csv": "still_being_written",
    }
    assert [f.name for f in done.files] == sorted(outcome)  # name order, one at a time
    assert done.counts() == {
        "imported": 2,
        "rejected": 1,
        "skipped_duplicate": 1,
        "still_being_written": 1,
    }
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == [
        "1_members.csv",
        "3_members_copy.csv",
        "4_full.csv",
    ]
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == [
        "2_signups.csv",
        "2_signups.csv.errors.csv",
    ]
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["5_tonight.csv"]
    duplicate = next(f for f in done.files if f.outcome is drops.Outcome.duplicate)
    assert "1_members.csv" in duplicate.detail

    # the errors CSV names both bad rows (data row, physical line, column), nothing else
    errors = read_errors(inbox / "rejected" / "2_signups.csv.errors.csv")
    assert [(e["file"], e["row"], e["line"], e["column"]) for e in errors] == [
        ("2_signups.csv", "2", "3", "user_id"),
        ("2_signups.csv", "3", "4", "phone"),
    ]
    text = (inbox / "rejected" / "2_signups.csv.errors.csv").read_text(encoding="utf-8-sig")
    assert mobile(21) not in text and mobile(21).replace("-", "") not in text
    assert not {"s1", "s4"} & set(users_table(ctx))  # all or nothing

    # the full export: m3 and m4 are kept (history) but inactive, and never selected
    assert users_table(ctx) == {"m1": True, "m2": True, "m3": False, "m4": False, "m5": True}
    preview = dl.preview_bulk(ctx, ["セール"])
    assert sorted(preview.selection.recipients["phone"]) == [e164(1), e164(2), e164(5)]
    assert "2 inactive users" in preview.diagnosis

    # a later pass, once tonight's export is whole: picked up then, not before
    half.write_bytes(members([1, 2, 5, 6]))
    assert drops.watch(ctx, str(inbox), mode="replace").counts()["still_being_written"] == 1
    later = drops.watch(ctx, str(inbox), mode="replace", now=clock.now() + timedelta(minutes=1))
    assert [(f.name, f.outcome.value, f.rows) for f in later.files] == [
        ("5_tonight.csv", "imported", 4)
    ]
    assert users_table(ctx)["m6"] is True and users_table(ctx)["m3"] is False
    assert not [p for p in inbox.iterdir() if p.is_file()]


def test_issue11_the_same_on_an_fsspec_url(ctx):
    """memory:// stands for s3://… and gcs://…: the same layout, outcomes and errors CSV;
    an uploader's ``.part`` name is never taken, and a file whose time the filesystem
    gives as just now is taken once two looks agree."""
    url = f"memory://drops-{uuid.uuid4().hex}"
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root)
    try:
        fs.pipe_file(f"{root}/1_members.csv", members([1, 2, 3]))
        fs.pipe_file(f"{root}/2_signups.csv", BAD)
        fs.pipe_file(f"{root}/3_again.csv", members([1, 2, 3]))
        fs.pipe_file(f"{root}/4_full.csv.part", members([1, 3]))
        fs.pipe_file(f"{root}/optouts/stop.csv", f"phone\n{mobile(3)}\n".encode())
        later = clock.now() + timedelta(minutes=1)

        first = drops.watch(ctx, url, mode="replace", now=later)
        assert {f.name: f.outcome.value for f in first.files} == {
            "1_members.csv": "imported",
            "2_signups.csv": "rejected",
            "3_again.csv": "skipped_duplicate",
            "4_full.csv.part": "still_being_written",
            "stop.csv": "imported",
        }
        assert fs.exists(f"{root}/processed/1_members.csv")
        assert fs.exists(f"{root}/processed/3_again.csv")
        assert fs.exists(f"{root}/optouts/processed/stop.csv")
        errors = read_errors_text(fs.cat_file(f"{root}/rejected/2_signups.csv.errors.csv"))
        assert [(e["row"], e["column"]) for e in errors] == [("2", "user_id"), ("3", "phone")]
        assert people.load_optouts(ctx) == [e164(3)]

        fs.mv(f"{root}/4_full.csv.part", f"{root}/4_full.csv")  # the upload is done
        # its time is "now" for the filesystem: not taken at the first look…
        look = drops.watch(ctx, url, mode="replace")
        assert [f.outcome.value for f in look.files] == ["still_being_written"]
        # …but at the next, unchanged since
        taken = drops.watch(ctx, url, mode="replace", previous=look.looks)
        assert [(f.name, f.outcome.value) for f in taken.files] == [("4_full.csv", "imported")]
        assert users_table(ctx) == {"m1": True, "m2": False, "m3": True}
        # R16 and #11 together: m3 is active but opted out, m2 inactive: only m1 is sent to
        preview = dl.preview_bulk(ctx, ["hi"])
        assert preview.selection.recipients["phone"].tolist() == [e164(1)]
        assert "1 inactive user" in preview.diagnosis
    finally:
        fs.rm(root, recursive=True)


def read_errors_text(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def test_issue11_upsert_is_the_default_and_keeps_users_missing_from_a_file(ctx, inbox):
    drop(inbox, "a.csv", members([1, 2]))
    drop(inbox, "b.csv", members([3]))
    drops.watch(ctx, str(inbox))
    assert users_table(ctx) == {"m1": True, "m2": True, "m3": True}


def test_issue11_a_user_back_in_a_later_export_is_active_again(ctx, inbox):
    drop(inbox, "a.csv", members([1, 2]))
    drop(inbox, "b.csv", members([1]))
    drops.watch(ctx, str(inbox), mode="replace")
    assert users_table(ctx) == {"m1": True, "m2": False}
    drop(inbox, "c.csv", members([2]))
    drops.watch(ctx, str(inbox))  # upsert: m2 is in a current export again
    assert users_table(ctx) == {"m1": True, "m2": True}


def test_issue11_a_crash_between_commit_and_move_makes_the_retry_a_skip(ctx, inbox):
    """The move to processed/ fails for real (a file stands where the folder should be):
    the import has committed, the file stays in the inbox, and the next pass skips it as
    already imported instead of importing it twice."""
    drop(inbox, "a.csv", members([1, 2]))
    (inbox / "processed").write_text("not a folder")
    with pytest.raises(OSError):
        drops.watch(ctx, str(inbox), mode="replace")
    assert (inbox / "a.csv").exists()
    assert users_table(ctx) == {"m1": True, "m2": True}

    (inbox / "processed").unlink()
    again = drops.watch(ctx, str(inbox), mode="replace")
    assert [(f.name, f.outcome.value) for f in again.files] == [("a.csv", "skipped_duplicate")]
    assert (inbox / "processed" / "a.csv").exists()


def test_issue11_a_name_already_in_processed_is_not_overwritten(ctx, inbox):
    drop(inbox, "members.csv", members([1]))
    drops.watch(ctx, str(inbox))
    drop(inbox, "members.csv", members([1, 2]))  # the next night, the same name
    moved = drops.watch(ctx, str(inbox)).files[0].moved_to
    assert moved == "processed/members.1.csv"
    assert (inbox / "processed" / "members.csv").read_bytes() == members([1])


@pytest.mark.parametrize(
    ("folder", "said"),
    [
        ("{tmp}/missing", "no such folder"),
        ("{tmp}/file.csv", "is a file"),
        ("nope://x", "Protocol not known"),
        ("", "no folder given"),
    ],
)
def test_issue11_a_bad_folder_is_one_input_error(ctx, tmp_path, folder, said):
    (tmp_path / "file.csv").write_text("user_id,phone\n")
    with pytest.raises(InputError, match=said):
        drops.watch(ctx, folder.format(tmp=tmp_path))


def test_issue11_error_rows_name_row_line_and_mask_numbers():
    from smsops.errors import Problem

    rows = drops.error_rows(
        "x.csv", [Problem(4, "phone", f"{mobile(7)!r} is not a mobile (line 5)")]
    )
    assert rows[0]["row"] == 4 and rows[0]["line"] == 5
    assert mobile(7) not in str(rows[0]["problem"]) and "(line" not in str(rows[0]["problem"])
    assert (
        drops.errors_csv([{**rows[0], "file": "=cmd.csv"}])
        .decode("utf-8-sig")
        .split("\n")[1]
        .startswith("'=cmd.csv")
    )


def test_issue11_a_file_whose_import_fails_midway_stays_to_be_retried_whole(sqlite_settings, inbox):
    """A real fault inside the import: another process holds SQLite's write lock past the
    busy timeout. Nothing of the file is stored, it stays in the inbox, and the next pass
    imports it whole."""
    import sqlite3

    from smsops.errors import StoreUnavailable
    from smsops.services.context import Context

    ctx = Context.open(sqlite_settings.model_copy(update={"busy_timeout": 0.2}))
    people.users_count(ctx)  # the store exists
    drop(inbox, "a.csv", members([1, 2, 3]))
    other = sqlite3.connect(sqlite_settings.database_url.removeprefix("sqlite:///"))
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable):
            drops.watch(ctx, str(inbox))
    finally:
        other.rollback()
        other.close()
    assert (inbox / "a.csv").exists() and not (inbox / "processed").exists()
    assert users_table(ctx) == {}
    again = drops.watch(ctx, str(inbox))
    assert [(f.name, f.outcome.value, f.rows) for f in again.files] == [("a.csv", "imported", 3)]
    assert users_table(ctx) == {"m1": True, "m2": True, "m3": True}
    ctx.close()
