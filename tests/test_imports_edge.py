"""User tables that used to go wrong quietly (garbled text imported, exit 0) or loudly
("unexpected Error"): each is now read right, or refused in one line naming where.

DESIGN.md: "Bad input (encodings, malformed rows, Excel-mangled numbers …) gets a clear
error; an import is all-or-nothing." Every refusal is one line on stderr, exit 1, and
one JSON error document under --json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support import mobile

from smsops.errors import InputError
from smsops.tables import read_users_csv


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def refused(path: Path, **kwargs: object) -> InputError:
    with pytest.raises(InputError) as info:
        read_users_csv(path, **kwargs)
    return info.value


def import_refused(cli, path: Path, *words: str, encoding: str = "auto") -> dict:
    """`users import --json` refuses: exit 1, one line on stderr, one JSON error document;
    nothing is imported."""
    result = cli("users", "import", str(path), "--encoding", encoding, "--json", code=1)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    error = json.loads(result.stdout)
    assert error["error"] == "input"
    for word in words:
        assert word in result.stderr and word in error["message"], (word, result.stderr)
    preview = json.loads(cli("bulk", "preview", "-m", "a", "--json").stdout)
    assert preview["diagnosis"].endswith("the user table is empty")  # nothing imported
    return error


# --- mixed encodings ------------------------------------------------------------------------

UTF8_LINES = "user_id,phone,氏名\nu1,09010000001,山田\n".encode()
CP932_LINE = "u2,09010000002,佐藤\n".encode("cp932")


def test_a_utf8_file_with_a_cp932_line_is_refused_naming_the_line(cli, tmp_path):
    path = write(tmp_path / "users.csv", UTF8_LINES + CP932_LINE)
    error = refused(path)
    assert "mixes encodings" in str(error) and "up to line 2, but line 3 is not UTF-8" in str(error)
    import_refused(cli, path, "mixes encodings", "line 3")


def test_a_cp932_file_with_a_utf8_line_is_refused_naming_the_line(cli, tmp_path):
    # ﾃｽ in CP932 is C3 BD, which is also UTF-8 (ý): no evidence of a UTF-8 line
    kana = "user_id,phone,ｶﾅ\nu1,090,ﾃｽ\nu2,080,山田ﾃｽﾄ\n"
    users = read_users_csv(write(tmp_path / "kana.csv", kana.encode("cp932")))
    assert users["ｶﾅ"].tolist() == ["ﾃｽ", "山田ﾃｽﾄ"]
    head = "user_id,phone,氏名\nu1,09010000001,山田\n".encode("cp932")
    path = write(tmp_path / "users.csv", head + "u2,09010000002,佐藤\n".encode())
    for encoding in ("auto", "cp932"):  # CP932 reads UTF-8 as mojibake, without error
        assert "from line 1, but line 3 is UTF-8" in str(refused(path, encoding=encoding))
        import_refused(cli, path, "mixes encodings", "line 3", encoding=encoding)


# --- line endings and the last line -----------------------------------------------------------


def test_cr_only_line_endings_of_old_mac_exports_are_read(cli, tmp_path):
    text = f"user_id,phone,氏名\ru1,{mobile(1)},山田\ru2,{mobile(2)},佐藤\r"
    path = write(tmp_path / "users.csv", text.encode("cp932"))
    users = read_users_csv(path)
    assert users["user_id"].tolist() == ["u1", "u2"]
    assert users["氏名"].tolist() == ["山田", "佐藤"]
    assert json.loads(cli("users", "import", str(path), "--json").stdout)["rows"] == 2


def test_cr_only_file_names_the_line_of_a_bad_row(tmp_path):
    error = refused(write(tmp_path / "users.csv", b"user_id,phone\ru1,090\r,080\r"))
    assert "row 2, column 'user_id': is empty (required) (line 3)" in str(error)


@pytest.mark.parametrize("data", [b"user_id,phone", b"\xef\xbb\xbfuser_id,phone"])
def test_header_only_file_without_final_newline_has_no_users(cli, tmp_path, data):
    path = write(tmp_path / "users.csv", data)
    users = read_users_csv(path)
    assert users.empty and list(users.columns) == ["user_id", "phone"]
    assert json.loads(cli("users", "import", str(path), "--json").stdout)["rows"] == 0


# --- UTF-16 without a byte order mark ----------------------------------------------------------

UTF16_TEXT = "user_id\tphone\t氏名\r\nu1\t090-1000-0001\t髙橋\r\n"


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("encoding", ["auto", "utf-16"])
def test_utf16_without_bom_is_detected_and_read(cli, tmp_path, codec, encoding):
    path = write(tmp_path / "users.txt", UTF16_TEXT.encode(codec))
    users = read_users_csv(path, encoding=encoding)
    assert users["氏名"].tolist() == ["髙橋"] and users["phone"].tolist() == ["090-1000-0001"]
    imported = cli("users", "import", str(path), "--encoding", encoding, "--json")
    assert json.loads(imported.stdout)["rows"] == 1


def test_utf16_read_as_another_encoding_is_refused_and_the_advice_reads_it(cli, tmp_path):
    """Every --encoding a refusal advises reads the file: no advice loops back to a mode
    that fails (UTF-16 used to advise auto, and auto failed on the same file)."""
    path = write(tmp_path / "users.txt", UTF16_TEXT.encode("utf-16-le"))
    cp932 = write(tmp_path / "users.csv", "user_id,phone,氏名\nu1,090,山田\n".encode("cp932"))
    advice = []
    for wrong in ("utf-8", "cp932"):
        error = import_refused(cli, path, "looks like UTF-16", encoding=wrong)
        advice.append((path, re.findall(r"--encoding (?:or )?([\w-]+)", error["message"])))
    error = import_refused(cli, cp932, "not UTF-16", encoding="utf-16")
    advice.append((cp932, re.findall(r"--encoding ([\w-]+)", error["message"])))
    assert [encodings for _, encodings in advice] == [["utf-16"], ["utf-16"], ["auto"]]
    for file, encodings in advice:
        for encoding in {*encodings, "auto"}:
            imported = cli("users", "import", str(file), "--encoding", encoding, "--json")
            assert json.loads(imported.stdout)["rows"] == 1


def test_broken_utf16_without_bom_is_refused(cli, tmp_path):
    path = write(tmp_path / "users.txt", UTF16_TEXT.encode("utf-16-le")[:-1])  # odd length
    import_refused(cli, path, "looks like UTF-16LE without a byte order mark")


# --- oversized cells -----------------------------------------------------------------------


def test_a_cell_over_1_mib_is_refused_naming_row_and_column(cli, tmp_path):
    memo = b"x" * (1 << 20) + b"y"
    data = b"user_id,phone,memo\nu1,090,ok\nu2,080," + memo + b"\n"
    path = write(tmp_path / "users.csv", data)
    error = refused(path)
    assert [(p.row, p.column) for p in error.problems] == [(2, "memo")]
    assert "row 2, column 'memo': is larger than 1 MiB (1,048,577 bytes)" in str(error)
    refusal = import_refused(cli, path, "row 2, column 'memo'", "larger than 1 MiB")
    assert refusal["problems"] == [
        {"row": 2, "column": "memo", "problem": refusal["problems"][0]["problem"]}
    ]


def test_a_quoted_cell_just_under_1_mib_with_line_breaks_is_read(tmp_path):
    memo = "行\n" * 200_000  # 800,000 bytes, longer than the csv module's default 128 KiB
    data = f'user_id,phone,memo\nu1,090,"{memo}"\nu2,080,x\n'.encode()
    users = read_users_csv(write(tmp_path / "users.csv", data))
    assert users["memo"].tolist() == [memo, "x"]


def test_a_quote_left_open_over_1_mib_is_refused_at_its_row(tmp_path):
    data = b'user_id,phone,memo\nu1,090,"open\n' + b"u2,080,yyyyyyyyyyyyyyyyyyyy\n" * 60_000
    error = refused(write(tmp_path / "users.csv", data))
    assert "row 1, column 'memo': is larger than 1 MiB" in str(error)
    assert "a quote left open?" in str(error)


# --- R3, R4: which column holds the phone numbers ----------------------------------------

LANDLINE_AND_MOBILE = (
    f"user_id,電話番号,携帯電話番号\nu1,03-1234-5678,{mobile(1)}\nu2,06-1111-2222,{mobile(2)}\n"
)


def test_r3_users_import_says_which_column_was_read(cli, tmp_path):
    path = write(tmp_path / "users.csv", LANDLINE_AND_MOBILE.encode("cp932"))
    result = json.loads(cli("users", "import", str(path), "--json").stdout)
    assert result == {"rows": 2, "users_total": 2, "phone_column": "携帯電話番号"}
    preview = json.loads(cli("bulk", "preview", "-m", "a", "--json").stdout)
    assert preview["recipients"] == 2  # not 0: the landlines were not read as the phones


def test_r4_preview_of_a_users_file_says_which_column_was_read(cli, tmp_path):
    path = write(tmp_path / "users.csv", LANDLINE_AND_MOBILE.encode())
    preview = json.loads(cli("bulk", "preview", "-m", "a", "--users", str(path), "--json").stdout)
    assert preview["recipients"] == 2
    assert preview["diagnosis"] == (
        "2 recipients from 2 users; phone numbers read from column '携帯電話番号' "
        "('電話番号' kept as an attribute)"
    )
