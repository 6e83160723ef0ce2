"""Hostile user tables: NUL bytes, a 200,000-character cell, 100,000 columns, a file of
several GB under a memory limit, a header made only of byte order marks.

What must hold for each (DESIGN.md: "an import is all-or-nothing", "a refused operation
exits 1 with one clear line"): one InputError whose one short line names the file and
where (row or line, column), `users import` exits 1 with
that line on stderr and one JSON error document, nothing is imported — or, where the
table is legitimate, it is read exactly. Memory stays bounded: a file past smsops's size
limit is refused before it is read, by a process whose address space is capped
(RLIMIT_AS) below the file's size.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import mobile
from typer.testing import CliRunner

from smsops.cli import app
from smsops.errors import InputError
from smsops.tables import (
    MAX_COLUMNS,
    MAX_FILE,
    MAX_NAME,
    MAX_USER_ID,
    read_phone_list,
    read_users_csv,
    read_users_csvs,
)

# characters: "one clear line", whatever the file holds (it used to quote 80,000 NULs, a
# 200,000-character id or 100,000 column names); at most 5 problems of ~130 each are shown
ONE_LINE = 1000
GIB = 1 << 30
# The address space of the import subprocess, measured on this project's machines:
# `smsops --help` alone needs ~640 MiB (pyarrow, numpy, pandas map their libraries), and
# pyarrow's allocator (mimalloc) reserves 1 GiB more whenever the cap leaves room for it,
# so under 1.5 GiB only ~80 MiB would be left. At 2 GiB ~600 MiB are left: enough to import
# a real table (the control test) and to read a stream up to the size limit, and half of
# the 4 GiB file.
ADDRESS_SPACE = 2 * GIB


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def refused(path: Path, reader: Callable[..., object] = read_users_csv) -> InputError:
    with pytest.raises(InputError) as info:
        reader(path)
    error = info.value
    assert str(error).startswith(f"{path}: ") and "\n" not in str(error)
    assert len(str(error)) < ONE_LINE, str(error)[:ONE_LINE]
    return error


def env_for(tmp_path: Path) -> dict[str, str]:
    return {
        "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}",
        "SMSOPS_OUTBOX": str(tmp_path / "outbox.jsonl"),
    }


def users_in_store(tmp_path: Path) -> str:
    """The preview's diagnosis of the store (`... the user table is empty` when empty)."""
    result = CliRunner().invoke(
        app, ["bulk", "preview", "-m", "a", "--json"], env=env_for(tmp_path)
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["diagnosis"]


def import_refused(tmp_path: Path, path: Path, *words: str) -> dict:
    """`users import --json` in this process: exit 1, one line naming ``words`` on stderr,
    one JSON error document on stdout, nothing imported."""
    result = CliRunner().invoke(
        app, ["users", "import", str(path), "--json"], env=env_for(tmp_path)
    )
    assert result.exit_code == 1, (result.output, result.exception)
    line = result.stderr.strip()
    assert "\n" not in line and len(line) < ONE_LINE and "Traceback" not in line, line[:ONE_LINE]
    error = json.loads(result.stdout)
    assert error["error"] == "input", error
    for word in words:
        assert word in line and word in error["message"], (word, line)
    assert users_in_store(tmp_path).endswith("the user table is empty")
    return error


def smsops(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`smsops ARGS` in a process whose address space is capped at ADDRESS_SPACE."""

    def cap() -> None:  # in the child, before it execs Python
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run(
        [sys.executable, "-m", "smsops.cli", *args],
        # no SMSOPS_* of the caller's (SMSOPS_DEBUG would print tracebacks)
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("SMSOPS_")},
            **env_for(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap,
    )


def one_line_input_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and len(line) < ONE_LINE, line[:2000]
    error = json.loads(result.stdout)
    assert error["error"] == "input", error  # not "unexpected" (MemoryError, ...)
    for word in words:
        assert word in line, (word, line)
    return line


# --- NUL bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"user_id,phone,memo\nu1,09012345678,ok\nu2,08012345678,a\x00b\n", (2, "memo", 3)),
        (b"user_id,phone\nu1,0901234\x005678\nu2,08012345678\n", (1, "phone", 2)),
        # the row starts on line 2; its NUL byte is on line 3, which the error names
        (b'user_id,phone,memo\nu1,090,"two\nlines\x00"\nu2,080,x\n', (1, "memo", 3)),
    ],
    ids=["memo", "phone", "quoted-multiline"],
)
def test_a_nul_byte_in_a_cell_is_refused_naming_row_column_and_line(tmp_path, data, where):
    path = write(tmp_path / "users.csv", data)
    error = refused(path)
    row, column, line = where
    assert [(p.row, p.column) for p in error.problems] == [(row, column)]
    assert f"row {row}, column {column!r}: holds a NUL byte" in str(error)
    assert f"(line {line})" in str(error)
    import_refused(tmp_path, path, "NUL byte", f"row {row}", f"line {line}")


def test_a_nul_byte_in_the_header_is_refused_naming_line_and_column(tmp_path):
    path = write(tmp_path / "users.csv", b"user_id,ph\x00one,memo\nu1,09012345678,ok\n")
    error = refused(path)
    assert str(error) == (
        f"{path}: header column 2 holds a NUL byte, which no text has (a binary or damaged "
        "file?) (line 1)"
    )  # not "required column 'phone' is missing"
    import_refused(tmp_path, path, "header column 2 holds a NUL byte", "line 1")


def test_a_file_of_nul_bytes_is_refused_in_one_short_line(tmp_path):
    """A file preallocated and never written (a crash, a full disk): zeros only. The line
    used to quote all 10,000 of them, twice."""
    path = write(tmp_path / "users.csv", b"\x00" * 10_000)
    error = refused(path)
    assert len(error.problems) == 1
    assert "header column 1 holds a NUL byte" in str(error)
    import_refused(tmp_path, path, "NUL byte", "line 1")


def test_nul_padding_after_the_last_row_is_refused_at_its_line(tmp_path):
    path = write(tmp_path / "users.csv", f"user_id,phone\nu1,{mobile(1)}\n".encode() + b"\0" * 8192)
    error = refused(path)
    assert [(p.row, p.column) for p in error.problems] == [(2, None)]
    assert "row 2: holds a NUL byte" in str(error) and "(line 3)" in str(error)


def test_r16_a_nul_byte_in_an_opt_out_list_is_refused(tmp_path):
    path = write(tmp_path / "optout.csv", b"phone\n09012345678\n0801111\x002222\n")
    error = refused(path, read_phone_list)
    assert [(p.row, p.column) for p in error.problems] == [(2, "phone")]
    assert "(line 3)" in str(error)


# --- a 200,000-character cell --------------------------------------------------------------


def test_a_200000_character_attribute_is_read_exactly(tmp_path):
    """A guard (read right before this change too): a long memo under the 1 MiB cell
    limit is a legitimate attribute, kept as written."""
    memo = "備考" * 100_000  # 200,000 characters, 600,000 bytes
    path = write(tmp_path / "users.csv", f"user_id,phone,memo\nu1,{mobile(1)},{memo}\n".encode())
    assert read_users_csv(path)["memo"].tolist() == [memo]
    result = CliRunner().invoke(
        app, ["users", "import", str(path), "--json"], env=env_for(tmp_path)
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["rows"] == 1


def test_a_200000_character_user_id_is_refused_in_one_short_line(tmp_path):
    """No store keeps such an id (users.user_id is VARCHAR(128); PostgreSQL would fail at
    the insert), and repeating it used to put all 200,000 characters in the line."""
    uid = "u" * 200_000
    path = write(
        tmp_path / "users.csv", f"user_id,phone\n{uid},{mobile(1)}\n{uid},{mobile(2)}\n".encode()
    )
    error = refused(path)
    assert [(p.row, p.column) for p in error.problems][:2] == [(1, "user_id"), (2, "user_id")]
    assert f"is longer than {MAX_USER_ID} characters" in str(error)
    import_refused(tmp_path, path, "row 1, column 'user_id'", f"longer than {MAX_USER_ID}")
    ok = write(tmp_path / "ok.csv", f"user_id,phone\n{'u' * MAX_USER_ID},{mobile(1)}\n".encode())
    assert read_users_csv(ok)["user_id"].str.len().tolist() == [MAX_USER_ID]


def test_a_200000_character_phone_is_refused(tmp_path):
    """A guard (refused before this change too): no phone number is longer than 64."""
    path = write(tmp_path / "users.csv", b"user_id,phone\nu1," + b"9" * 200_000 + b"\n")
    error = refused(path)
    assert str(error).endswith("row 1, column 'phone': is longer than 64 characters (line 2)")


def test_a_200000_character_column_name_is_refused_naming_its_column(tmp_path):
    name = "h" * 200_000
    path = write(tmp_path / "users.csv", f"user_id,phone,{name}\nu1,{mobile(1)},x\n".encode())
    error = refused(path)
    assert str(error) == (
        f"{path}: header column 3 is a name of 200,000 characters; the longest smsops reads "
        f"is {MAX_NAME:,} (is the first line a header?) (line 1)"
    )
    import_refused(tmp_path, path, "header column 3", "line 1")


# --- 100,000 columns -----------------------------------------------------------------------


def test_a_header_of_100000_columns_is_refused_at_once(tmp_path):
    """It used to be read, in about 90 seconds (and, without user_id, refused with a
    2 MB line listing every name). The subprocess's timeout keeps a regression short."""
    names = ",".join(f"c{i}" for i in range(100_000 - 2))
    path = write(tmp_path / "users.csv", f"user_id,phone,{names}\nu1,{mobile(1)}\n".encode())
    result = smsops(tmp_path, "users", "import", str(path), "--json", timeout=30)
    line = one_line_input_error(
        result, "100,000 columns", f"the most smsops reads is {MAX_COLUMNS:,}"
    )
    assert "(line 1)" in line
    assert users_in_store(tmp_path).endswith("the user table is empty")


def test_the_column_limit_is_exact(tmp_path):
    """MAX_COLUMNS columns are read; one more is refused. A quoted comma is no column."""
    names = [f'"c,{i}"' for i in range(MAX_COLUMNS - 2)]
    header = ",".join(["user_id", "phone", *names])
    path = write(tmp_path / "users.csv", f"{header}\nu1,{mobile(1)}{',x' * len(names)}\n".encode())
    assert read_users_csv(path).shape == (1, MAX_COLUMNS)
    wider = write(
        tmp_path / "wider.csv", f"{header},c\nu1,{mobile(1)}{',x' * (len(names) + 1)}\n".encode()
    )
    assert f"the header has {MAX_COLUMNS + 1:,} columns" in str(refused(wider))


def test_a_row_of_100000_fields_is_refused_naming_its_row(tmp_path):
    """A guard (refused so before this change too; the count now reads 100,000)."""
    path = write(tmp_path / "users.csv", f"user_id,phone\nu1,{mobile(1)}{',x' * 99_998}\n".encode())
    error = refused(path)
    assert [(p.row, p.column) for p in error.problems] == [(1, None)]
    assert re.search(r"row 1: has 100,?000 fields, expected 2 \(line 2\)$", str(error))


# --- a file of several GB under a memory limit --------------------------------------------


def sparse_or_room(folder: Path, size: int) -> None:
    """Skip unless ``folder`` writes sparse files or, if not, has room for ``size`` bytes
    twice over: these tests must never fill the disk."""
    probe = folder / "sparse.probe"
    with probe.open("wb") as f:
        f.truncate(64 << 20)
    sparse = probe.stat().st_blocks * 512 < (1 << 20)
    probe.unlink()
    vfs = os.statvfs(folder)
    if not sparse and vfs.f_bavail * vfs.f_frsize < 2 * size:
        pytest.skip(f"{folder} has no sparse files and no room for {size:,} bytes")


@pytest.fixture
def huge(tmp_path: Path):
    """A users file of 4 GiB: a real header and rows, then a hole (a sparse file, so the
    disk holds a few KB of it). Deleted after the test."""
    sparse_or_room(tmp_path, 4 * GIB)
    path = tmp_path / "users.csv"
    with path.open("wb") as f:
        f.write(f"user_id,phone\nu1,{mobile(1)}\nu2,{mobile(2)}\n".encode())
        f.truncate(4 * GIB)
    try:
        yield path
    finally:
        path.unlink()


def test_a_file_of_4_gib_is_refused_before_reading_by_a_process_capped_at_2_gib(tmp_path, huge):
    """It used to be read whole: MemoryError, "unexpected MemoryError" (or, with memory to
    spare, gigabytes spent). Now its size is checked before a byte is read."""
    result = smsops(tmp_path, "users", "import", str(huge), "--json")
    line = one_line_input_error(result, "file is 4.0 GiB (4,294,967,296 bytes)", "256 MiB")
    assert line == (
        f"smsops: {huge}: file is 4.0 GiB (4,294,967,296 bytes); the largest file smsops "
        "reads at once is 256 MiB: split it and import the parts one by one"
    )
    assert users_in_store(tmp_path).endswith("the user table is empty")


def test_a_stream_without_end_is_refused_after_the_size_limit(tmp_path):
    """A pipe or a device has no size to check first: reading stops one byte past the
    limit. /dev/zero used to be read until memory ran out."""
    result = smsops(tmp_path, "users", "import", "/dev/zero", "--json")
    one_line_input_error(
        result, "/dev/zero: file is larger than 256 MiB, the largest file smsops reads at once"
    )


def test_a_real_table_still_imports_under_the_same_memory_cap(tmp_path):
    """The control: the cap leaves room for real work, so the refusals above are the size
    check's doing, not the cap's."""
    rows = "".join(f"u{i},{mobile(i)},山田{i}\n" for i in range(1, 20_001))
    path = write(tmp_path / "users.csv", f"user_id,phone,氏名\n{rows}".encode())
    result = smsops(tmp_path, "users", "import", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 20_000


def test_files_of_one_import_are_limited_together(tmp_path):
    """An import holds all its files at once: two files of 200 MiB (sparse) are 400."""
    sparse_or_room(tmp_path, 400 << 20)
    paths = []
    for name in ("a.csv", "b.csv"):
        path = tmp_path / name
        with path.open("wb") as f:
            f.write(f"user_id,phone\n{name},{mobile(1)}\n".encode())
            f.truncate(200 << 20)
        paths.append(path)
    try:
        with pytest.raises(InputError) as info:
            read_users_csvs(paths)
        assert str(info.value) == (
            f"{paths[0]}, {paths[1]}: the files are together 400 MiB (419,430,400 bytes); "
            "one import reads at most 256 MiB: import them in several runs"
        )
        assert MAX_FILE == 256 << 20
    finally:
        for path in paths:
            path.unlink()


# --- a header of only byte order marks ----------------------------------------------------

BOM = "\ufeff"


@pytest.mark.parametrize(
    "data",
    [
        (BOM * 5 + "\nu1,09012345678\n").encode(),
        (BOM * 5).encode(),  # nothing else
        (BOM + "," + BOM + "\nu1,09012345678\n").encode(),  # one per column
        (BOM * 3 + "\r\nu1,09012345678\r\n").encode("utf-16"),  # Excel's Unicode text
    ],
    ids=["line", "file", "columns", "utf-16"],
)
def test_a_header_of_only_byte_order_marks_is_refused_as_such(tmp_path, data):
    """It used to read as a column named 'column_1', refused twice for missing user_id
    and phone (found: 'column_1')."""
    path = write(tmp_path / "users.csv", data)
    error = refused(path)
    assert str(error) == (
        f"{path}: the header line has no column names, only byte order marks (U+FEFF: one "
        "added on every save?) (line 1)"
    )
    import_refused(tmp_path, path, "only byte order marks", "line 1")
