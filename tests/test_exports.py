"""CSV files smsops writes for people to open in Excel: `bulk preview --export` (R13),
`bulk preview --excluded` (R4) and `deliveries errors --csv` (R14).

Each is UTF-8 with a BOM (Excel reads a CSV without one as CP932 and garbles Japanese),
writes numbers as 090-1234-5678 (Excel turns +819012345678 into 8.19012E+11 and
09012345678 into 9012345678), quotes any cell that starts like a formula, and is refused
in one line (exit 1) when its path cannot be written, leaving nothing half-written."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support import RefusingOutbox, add_users, e164, mobile, users_csv

from smsops import classify_phones
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.settings import Settings


def read_csv(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf"), data[:10]  # UTF-8 with BOM, for Excel
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))


def one_line_refusal(result, *words: str) -> None:
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("smsops: ")
    for word in words:
        assert word in result.stderr, (word, result.stderr)


# --- R4: --excluded ----------------------------------------------------------------------

PHONES = [mobile(1), "03-1234-5678", "", mobile(1), "12345", mobile(2)]


def test_r4_excluded_csv_says_who_was_left_out_and_why_with_masked_numbers(cli):
    cli("users", "import", str(users_csv(cli.tmp, PHONES)))
    cli("optout", "add", mobile(2))
    target = cli.tmp / "excluded.csv"
    out = json.loads(cli("bulk", "preview", "-m", "a", "--excluded", str(target), "--json").stdout)
    rows = read_csv(target)
    assert rows[0] == ["user_id", "reason", "phone", "duplicate_of", "kept_by"]
    assert rows[1:] == [
        ["u2", "not_mobile", "031-****-5678", "", ""],  # masked as in logs
        ["u3", "no_phone", "", "", ""],
        ["u4", "duplicate", "090-****-0001", "090-****-0001", "u1"],  # R5: u1 keeps it
        ["u5", "malformed", "", "", ""],
        ["u6", "opted_out", "090-****-0002", "", ""],
    ]
    assert len(rows) - 1 == sum(out["excluded"].values())  # the file matches the counts
    text = target.read_text(encoding="utf-8-sig")
    assert mobile(1) not in text and e164(1) not in text and "1234-5678" not in text


def test_r4_excluded_csv_unmasked_has_full_numbers_excel_keeps(cli):
    cli("users", "import", str(users_csv(cli.tmp, PHONES)))
    target = cli.tmp / "excluded.csv"
    cli("bulk", "preview", "-m", "a", "--excluded", str(target), "--unmasked")
    rows = {r[0]: r for r in read_csv(target)[1:]}
    assert rows["u2"][2] == "03-1234-5678"
    assert rows["u4"][2:] == ["090-1000-0001", "090-1000-0001", "u1"]


def test_r4_unmasked_without_excluded_is_a_usage_error(cli):
    cli("users", "import", str(users_csv(cli.tmp, PHONES)))
    result = cli("bulk", "preview", "-m", "a", "--unmasked", code=2)  # #14: usage, exit 2
    assert "--unmasked applies to --excluded" in result.stderr
    document = json.loads(cli("bulk", "preview", "-m", "a", "--unmasked", "--json", code=2).stdout)
    assert document == {"error": "usage", "message": "--unmasked applies to --excluded"}


# --- R13: --export and --excluded paths -------------------------------------------------


@pytest.mark.parametrize("option", ["--export", "--excluded"])
def test_r13_export_to_a_missing_folder_is_one_clear_line_and_writes_nothing(cli, option):
    cli("users", "import", str(users_csv(cli.tmp, PHONES)))
    target = cli.tmp / "no" / "such" / "out.csv"
    result = cli("bulk", "preview", "-m", "a", option, str(target), "--json", code=1)
    one_line_refusal(result, option, "does not exist")
    error = json.loads(result.stdout)
    assert error["error"] == "input" and option in error["message"]
    assert not (cli.tmp / "no").exists()


@pytest.mark.parametrize("option", ["--export", "--excluded"])
def test_r13_export_to_a_folder_is_one_clear_line(cli, option):
    cli("users", "import", str(users_csv(cli.tmp, PHONES)))
    folder = cli.tmp / "exports"
    folder.mkdir()
    result = cli("bulk", "preview", "-m", "a", option, str(folder), code=1)
    one_line_refusal(result, option, "is a folder")
    assert list(folder.iterdir()) == []


def test_r13_export_and_excluded_to_one_file_is_refused(cli):
    cli("users", "import", str(users_csv(cli.tmp, PHONES)))
    target = cli.tmp / "both.csv"
    result = cli(
        "bulk", "preview", "-m", "a", "--export", str(target), "--excluded", str(target), code=1
    )
    one_line_refusal(result, "--export and --excluded", "same file")
    assert not target.exists()


def test_r13_export_that_runs_out_of_space_leaves_the_old_file_whole(tmp_path):
    """A real write fault: the process may write files of 64 KiB at most (RLIMIT_FSIZE), and
    the recipient list is bigger. The refusal is one line and the previous export stays."""
    env = {
        **os.environ,
        "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}",
        "SMSOPS_OUTBOX": str(tmp_path / "outbox.jsonl"),
    }
    users = users_csv(tmp_path, [mobile(i) for i in range(1, 5001)])  # ~100 KB of recipients
    exe = [str(Path(sys.executable).parent / "smsops"), "bulk", "preview", "-m", "a"]
    subprocess.run([*exe, "--users", str(users)], env=env, check=True, capture_output=True)
    target = tmp_path / "recipients.csv"
    target.write_text("the previous export\n", encoding="utf-8")

    def limit() -> None:  # in the child: EFBIG instead of SIGXFSZ past 64 KiB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = subprocess.run(
        [*exe, "--users", str(users), "--export", str(target)],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=limit,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"smsops: --export {target}: cannot write: File too large")
    assert target.read_text(encoding="utf-8") == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- phone numbers as Excel keeps them ---------------------------------------------------


def test_r14_export_numbers_are_text_in_excel_and_read_back_by_pandas_and_r3():
    from smsops.cli.common import excel_phones, write_safe_csv

    phones = pd.Series(
        [e164(1), "+81312345678", "+81120123456", "+16502530000", None], dtype="string"
    )
    written = excel_phones(phones)
    assert written.tolist()[:4] == [
        "090-1000-0001",
        "03-1234-5678",
        "0120-123-456",
        "+1 650-253-0000",
    ]
    buffer = io.StringIO()
    write_safe_csv(pd.DataFrame({"phone": phones}), buffer, phones=["phone"])
    rows = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert rows[4] == ["'+1 650-253-0000"]  # starts like a formula: quoted
    back = pd.read_csv(io.StringIO(buffer.getvalue()), dtype_backend="pyarrow")
    assert back["phone"].iloc[0] == "090-1000-0001"  # a string, leading 0 kept
    assert classify_phones(back["phone"].iloc[:3])["e164"].tolist() == phones.iloc[:3].tolist()


def test_r14_deliveries_errors_csv_opens_in_excel_and_reads_back(cli):
    settings = Settings(
        database_url=cli.env["SMSOPS_DATABASE_URL"], outbox=cli.tmp / "outbox.jsonl"
    )
    ctx = Context.open(
        settings, gateway_factory=lambda s: RefusingOutbox(s.outbox, lambda b: b["seq"] > 0)
    )
    add_users(ctx, [mobile(1), mobile(2)])
    accounts.add_tickets(ctx, 4)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["セール", "二通目"]))
    dispatch(ctx, created.delivery_id)
    ctx.close()
    data = cli("deliveries", "errors", str(created.delivery_id), "--csv").stdout_bytes
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0] == ["seq", "user_id", "phone", "message_no", "error"]
    assert [r[2] for r in rows[1:]] == ["090-1000-0001"] * 2 + ["090-1000-0002"] * 2
    frame = pd.read_csv(io.BytesIO(data), dtype={"phone": "string"})  # pandas skips the BOM
    assert list(frame.columns) == ["seq", "user_id", "phone", "message_no", "error"]
    assert classify_phones(frame["phone"])["e164"].tolist() == [e164(1)] * 2 + [e164(2)] * 2
