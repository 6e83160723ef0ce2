"""Reading user tables and opt-out lists (R16) from the CSV files Excel and people write."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsops.domain.schemas import STRING
from smsops.errors import InputError
from smsops.tables import read_phone_list, read_users_csv, read_users_csvs

JAPANESE = (
    "user_id,phone,氏名\r\n"
    "u1,０９０－１２３４－５６７８,山田太郎\r\n"
    'u2,"090-1111-2222","佐藤, 花子"\r\n'
    "u3,,鈴木一郎\r\n"
)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def refused(*args: object, reader=read_users_csv, **kwargs: object) -> InputError:
    with pytest.raises(InputError) as info:
        reader(*args, **kwargs)
    return info.value


# --- encodings -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_auto_detects_encoding_and_keeps_japanese_text_exactly(tmp_path, encoding):
    users = read_users_csv(write(tmp_path / "users.csv", JAPANESE, encoding))
    assert list(users.columns) == ["user_id", "phone", "氏名"]
    assert users["user_id"].tolist() == ["u1", "u2", "u3"]
    assert users["phone"].tolist()[:2] == ["０９０－１２３４－５６７８", "090-1111-2222"]
    assert users["氏名"].tolist() == ["山田太郎", "佐藤, 花子", "鈴木一郎"]
    assert all(dtype == pd.StringDtype("pyarrow") for dtype in users.dtypes)


@pytest.mark.parametrize(
    ("written", "given_as"),
    [
        ("utf-8", "utf-8"),
        ("utf-8-sig", "utf-8"),
        ("utf-8-sig", "utf-8-sig"),
        ("cp932", "cp932"),
        ("cp932", "shift_jis"),
        ("cp932", "sjis"),
    ],
)
def test_explicit_encoding_reads_the_file(tmp_path, written, given_as):
    users = read_users_csv(write(tmp_path / "users.csv", JAPANESE, written), encoding=given_as)
    assert users["氏名"].iloc[0] == "山田太郎"
    assert users.columns[0] == "user_id"  # the BOM is not part of the first header


def test_cp932_extensions_round_trip(tmp_path):
    text = "user_id,phone,氏名\nu1,090-1234-5678,①㈱髙橋～\n"
    users = read_users_csv(write(tmp_path / "users.csv", text, "cp932"))
    assert users["氏名"].iloc[0] == "①㈱髙橋～"


def test_cp932_file_read_as_utf8_is_refused_with_the_bad_byte(tmp_path):
    path = write(tmp_path / "users.csv", JAPANESE, "cp932")
    error = refused(path, encoding="utf-8")
    assert str(path) in str(error)
    assert "not UTF-8" in str(error) and "line 1" in str(error) and "--encoding" in str(error)


def test_utf8_file_read_as_cp932_is_refused_instead_of_mojibake(tmp_path):
    error = refused(write(tmp_path / "users.csv", JAPANESE), encoding="cp932")
    assert "looks like UTF-8" in str(error)


def test_bytes_that_are_no_encoding_name_offset_and_line(tmp_path):
    path = tmp_path / "users.csv"
    path.write_bytes(b"user_id,phone\nu1,090\nu2,\xff\xfe\n")
    error = refused(path)
    assert "offset 24, line 3" in str(error) and "--encoding" in str(error)


def test_unknown_encoding_is_an_input_error(tmp_path):
    error = refused(write(tmp_path / "users.csv", JAPANESE), encoding="latin-1")
    assert "unknown encoding 'latin-1'" in str(error)


# --- what Excel and people write -------------------------------------------------------


def test_excel_export_with_bom_crlf_quotes_and_trailing_rows_is_read(tmp_path):
    text = (
        ' user_id ,\tphone , 氏名 ,\r\nu1,09012345678,"山田, 太郎",\r\n'
        'u2,090-2222-3333,"複数\r\n行",\r\n,,,\r\n\r\n\r\n'
    )
    users = read_users_csv(write(tmp_path / "users.csv", text, "utf-8-sig"))
    assert list(users.columns) == ["user_id", "phone", "氏名"]  # stripped; empty column dropped
    assert users["user_id"].tolist() == ["u1", "u2"]
    assert users["氏名"].tolist() == ["山田, 太郎", "複数\r\n行"]


def test_cells_stay_text_and_only_empty_cells_are_missing(tmp_path):
    text = "user_id,phone,score\n007,09012345678,NA\n008,,null\n009,  ,1.50\n"
    users = read_users_csv(write(tmp_path / "users.csv", text))
    assert users["user_id"].tolist() == ["007", "008", "009"]
    assert users["phone"].iloc[0] == "09012345678"
    assert users["phone"].isna().tolist() == [False, True, False]
    assert users["phone"].iloc[2] == "  "  # phone kept raw: classifying it is R3's job
    assert users["score"].tolist() == ["NA", "null", "1.50"]


def test_header_only_file_gives_no_users(tmp_path):
    users = read_users_csv(write(tmp_path / "users.csv", "user_id,phone\r\n"))
    assert users.empty and list(users.columns) == ["user_id", "phone"]


# --- refusals: one InputError naming file, row and column -------------------------------


def test_missing_file_is_refused(tmp_path):
    error = refused(tmp_path / "nope.csv")
    assert "nope.csv" in str(error) and "file not found" in str(error)


@pytest.mark.parametrize("text", ["", "\r\n\r\n"])
def test_empty_file_is_refused(tmp_path, text):
    assert "file is empty" in str(refused(write(tmp_path / "users.csv", text)))


def test_missing_required_column_names_the_columns_found(tmp_path):
    error = refused(write(tmp_path / "users.csv", "user_id,fax,氏名\nu1,090,山田\n"))
    assert "users.csv" in str(error)
    assert "column 'phone': required column 'phone' is missing" in str(error)
    assert "found: 'user_id', 'fax', '氏名'" in str(error)
    assert [p.column for p in error.problems] == ["phone"]


def test_wrong_number_of_fields_names_row_and_line(tmp_path):
    error = refused(write(tmp_path / "users.csv", "user_id,phone\n\nu1,090\nu2,090,extra\n"))
    assert "users.csv" in str(error)
    assert "row 2: has 3 fields, expected 2 (line 4)" in str(error)


def test_empty_user_id_names_row_column_and_line(tmp_path):
    error = refused(write(tmp_path / "users.csv", "user_id,phone\nu1,090\n ,080\n"))
    assert "users.csv" in str(error)
    assert "row 2, column 'user_id': is empty (required) (line 3)" in str(error)


def test_duplicate_user_id_names_each_repeat_and_the_first(tmp_path):
    text = "user_id,phone\nu1,090\nu2,080\nu1,070\nu1,060\n"
    error = refused(write(tmp_path / "users.csv", text))
    assert [(p.row, p.column) for p in error.problems] == [(3, "user_id"), (4, "user_id")]
    assert "row 3, column 'user_id': 'u1' repeats row 1" in str(error)
    assert "row 4, column 'user_id': 'u1' repeats row 1" in str(error)


def test_overlong_phone_is_refused(tmp_path):
    error = refused(write(tmp_path / "users.csv", f"user_id,phone\nu1,{'9' * 65}\n"))
    assert "row 1, column 'phone': is longer than 64 characters" in str(error)


@pytest.mark.parametrize("mangled", ["9.01234E+09", "9.01E+9", "9E+10", "8.01234e+09"])
def test_r3_phone_mangled_by_excel_into_scientific_notation_is_refused(tmp_path, mangled):
    error = refused(write(tmp_path / "users.csv", f"user_id,phone\nu1,090\nu2,{mangled}\n"))
    assert "row 2, column 'phone': phone looks like a number mangled by Excel" in str(error)
    assert error.problems[0].value == mangled


def test_three_bad_rows_are_all_listed_in_one_error(tmp_path):
    text = "user_id,phone\n,090\nu2,9.01E+09\nu3,080\nu3,070\nu5,060\n"
    error = refused(write(tmp_path / "users.csv", text))
    assert [(p.row, p.column) for p in error.problems] == [
        (1, "user_id"),
        (2, "phone"),
        (4, "user_id"),
    ]
    assert str(error).startswith(f"{tmp_path / 'users.csv'}: 3 problems: row 1,")


def test_empty_and_repeated_user_ids_are_each_reported_once(tmp_path):
    text = "user_id,phone\n,090\nu1,080\n,070\nu1,060\n  ,050\n"
    error = refused(write(tmp_path / "users.csv", text))
    assert [(p.row, p.problem.split(" (")[0]) for p in error.problems] == [
        (1, "is empty"),
        (3, "is empty"),
        (4, "'u1' repeats row 2"),
        (5, "is empty"),
    ]


def test_rows_after_a_broken_row_keep_their_numbers(tmp_path):
    text = "user_id,phone\nu1,090,x\nu2,090\n,080\n"
    error = refused(write(tmp_path / "users.csv", text))
    assert [(p.row, p.column) for p in error.problems] == [(1, None), (3, "user_id")]
    assert "(line 4)" in str(error.problems[1])


def test_rows_are_still_named_when_a_quoted_cell_spans_lines(tmp_path):
    text = 'user_id,phone,memo\nu1,090,"a\nb"\n,080,x\n'
    error = refused(write(tmp_path / "users.csv", text))
    assert str(error.problems[0]) == "row 2, column 'user_id': is empty (required)"


def test_unclosed_quote_is_refused_rather_than_swallowing_later_rows(tmp_path):
    text = 'user_id,phone\nu1,090\nu2,"080\nu3,070\nu4,5"x\n'
    error = refused(write(tmp_path / "users.csv", text))
    assert "users.csv" in str(error)
    assert "the row that starts on line 3 has a quoted cell that is not closed" in str(error)


def test_quote_left_open_at_the_end_is_refused(tmp_path):
    error = refused(write(tmp_path / "users.csv", 'user_id,phone\nu1,"090\nu2,080\n'))
    assert "line 2 has a quoted cell that is not closed properly" in str(error)


def test_quote_inside_an_unquoted_cell_is_text(tmp_path):
    users = read_users_csv(write(tmp_path / "users.csv", 'user_id,phone,size\nu1,090,5"\n'))
    assert users["size"].tolist() == ['5"']


# --- several files ---------------------------------------------------------------------


def test_several_files_concatenate_in_order(tmp_path):
    a = write(tmp_path / "a.csv", "user_id,phone,氏名\nu1,090,山田\nu2,080,佐藤\n", "cp932")
    b = write(tmp_path / "b.csv", "user_id,phone,email\nu3,070,c@example.jp\n", "utf-8-sig")
    users = read_users_csvs([a, b])
    assert users["user_id"].tolist() == ["u1", "u2", "u3"]
    assert users["氏名"].isna().tolist() == [False, False, True]
    assert users["email"].tolist()[2] == "c@example.jp"
    assert list(users.index) == [0, 1, 2]
    assert all(dtype == STRING for dtype in users.dtypes)


def test_user_id_repeated_across_files_is_refused(tmp_path):
    a = write(tmp_path / "a.csv", "user_id,phone\nu1,090\nu2,080\n")
    b = write(tmp_path / "b.csv", "user_id,phone\nu3,070\nu2,060\n")
    error = refused([a, b], reader=read_users_csvs)
    assert error.source == f"{a}, {b}"
    assert str(error.problems[0]) == (
        f"row 2, column 'user_id': 'u2' is already in {a} row 2 (in {b}, line 3)"
    )


def test_several_files_are_all_or_nothing_and_every_file_is_reported(tmp_path):
    good = write(tmp_path / "good.csv", "user_id,phone\nu1,090\n")
    bad = write(tmp_path / "bad.csv", "user_id,phone\n,090\n")
    error = refused([good, bad, tmp_path / "gone.csv"], reader=read_users_csvs)
    text = [str(p) for p in error.problems]
    assert text == [
        f"row 1, column 'user_id': is empty (required) (in {bad}, line 2)",
        f"table: file not found (in {tmp_path / 'gone.csv'})",
    ]


# --- opt-out lists (R16) ----------------------------------------------------------------


def test_r16_optout_list_phone_column(tmp_path):
    text = "Phone,memo\r\n090-1234-5678,x\r\n,y\r\n08011112222,z\r\n"
    path = write(tmp_path / "optout.csv", text)
    phones = read_phone_list(path)
    assert phones.tolist() == ["090-1234-5678", "08011112222"]
    assert phones.dtype == STRING and phones.name == "phone"


def test_r16_optout_list_japanese_header_in_cp932(tmp_path):
    text = "氏名,電話番号\n山田太郎,０９０－１２３４－５６７８\n"
    phones = read_phone_list(write(tmp_path / "optout.csv", text, "cp932"))
    assert phones.tolist() == ["０９０－１２３４－５６７８"]


def test_r16_optout_list_single_column_without_header(tmp_path):
    path = write(tmp_path / "optout.csv", '090-1234-5678\r\n"080 1111 2222"\r\n\r\n', "utf-8-sig")
    assert read_phone_list(path).tolist() == ["090-1234-5678", "080 1111 2222"]


def test_r16_optout_list_without_phone_column_is_refused(tmp_path):
    error = refused(write(tmp_path / "optout.csv", "name,fax\na,090\n"), reader=read_phone_list)
    assert "no 'phone' or '電話番号' column" in str(error) and "'fax'" in str(error)


def test_r16_optout_list_mangled_number_is_refused(tmp_path):
    path = write(tmp_path / "optout.csv", "09012345678\n9.01234E+09\n")
    error = refused(path, reader=read_phone_list)
    assert "row 2, column 'phone': phone looks like a number mangled by Excel" in str(error)


def test_r16_optout_list_broken_row_names_its_line(tmp_path):
    error = refused(write(tmp_path / "optout.csv", "090\n080,070\n"), reader=read_phone_list)
    assert "row 2: has 2 fields, expected 1 (line 2)" in str(error)


# --- property: whatever is written comes back exactly ------------------------------------

CELL = st.text(alphabet='山田太郎花子佐藤ｱｲｳ①㈱ー－０１２９ abc,"\n-', min_size=1).filter(str.strip)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.tuples(CELL, CELL), min_size=1, max_size=8),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp932"]),
)
def test_written_table_reads_back_exactly(tmp_path_factory, rows, encoding):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["user_id", "phone", "氏名"])
    writer.writerows((f"u{i}", phone, name) for i, (phone, name) in enumerate(rows))
    path = write(tmp_path_factory.mktemp("t") / "users.csv", buffer.getvalue(), encoding)
    users = read_users_csv(path)
    assert users["phone"].tolist() == [phone for phone, _ in rows]
    assert users["氏名"].tolist() == [name for _, name in rows]


# --- what real exports look like ----------------------------------------------------------


@pytest.mark.parametrize("bom", ["utf-16", "utf-16-be"])
def test_excel_unicode_text_utf16_tab_separated(tmp_path, bom):
    text = "user_id\tphone\t氏名\r\nu1\t090-1234-5678\t髙橋\r\nu2\t080-1111-2222\t山﨑\r\n"
    data = ("\ufeff" + text).encode(bom)  # Excel writes a BOM first
    path = tmp_path / "users.txt"
    path.write_bytes(data)
    users = read_users_csv(path)
    assert users["user_id"].tolist() == ["u1", "u2"]
    assert users["氏名"].tolist() == ["髙橋", "山﨑"]
    assert read_users_csv(path, encoding="utf-16")["phone"].tolist()[0] == "090-1234-5678"


@pytest.mark.parametrize(
    "header",
    ["User_ID,Phone", "ユーザーID,電話番号", " user_id ,携帯電話番号", "ＵＳＥＲ＿ＩＤ,ＰＨＯＮＥ"],
)
def test_required_columns_under_the_names_people_give_them(tmp_path, header):
    users = read_users_csv(write(tmp_path / "users.csv", f"{header}\nu1,09012345678\n"))
    assert list(users.columns[:2]) == ["user_id", "phone"]
    assert users.loc[0, "phone"] == "09012345678"


def test_user_ids_are_compared_without_surrounding_spaces(tmp_path):
    error = refused(write(tmp_path / "users.csv", "user_id,phone\n1,090\n 1 ,080\n"))
    assert "row 2, column 'user_id': '1' repeats row 1" in str(error)
    ok = read_users_csv(write(tmp_path / "ok.csv", "user_id,phone\n u7 ,090\n"))
    assert ok["user_id"].tolist() == ["u7"]


def test_a_repeated_header_line_is_refused_not_imported_as_a_user(tmp_path):
    text = "user_id,phone\nu1,090\nuser_id,phone\nu2,080\n"
    error = refused(write(tmp_path / "users.csv", text))
    assert "row 2, column 'user_id': repeats the header line" in str(error)
    assert len(error.problems) == 1


def test_r16_optout_errors_name_the_data_row_even_after_blank_cells(tmp_path):
    from smsops.services.people import _e164

    path = write(tmp_path / "optout.csv", "phone,name\n,a\n,b\n090-1111-2222 内線3,c\n")
    with pytest.raises(InputError) as info:
        _e164(read_phone_list(path), str(path), table=True)
    assert [(p.row, p.column) for p in info.value.problems] == [(3, "phone")]


# --- R3: which column holds the phone numbers ----------------------------------------------


def test_r3_mobile_column_preferred_over_landline(tmp_path):
    text = "user_id,電話番号,携帯電話番号\nu1,03-1234-5678,090-1234-5678\nu2,06-1111-2222,\n"
    users = read_users_csv(write(tmp_path / "users.csv", text))
    assert users["phone"].fillna("").tolist() == ["090-1234-5678", ""]
    assert users["電話番号"].tolist() == ["03-1234-5678", "06-1111-2222"]  # an attribute
    assert users.attrs["phone_columns"] == ["携帯電話番号"]
    assert users.attrs["other_phone_columns"] == ["電話番号"]


@pytest.mark.parametrize(
    ("header", "read"),
    [
        ("user_id,電話番号,携帯電話番号", "携帯電話番号"),
        ("user_id,Phone,Mobile", "Mobile"),  # a CRM export: Phone is the office line
        ("user_id,tel,携帯番号,mobile", "携帯番号"),  # several mobile ones: the left-most
        ("user_id,ＴＥＬ,電話番号", "ＴＥＬ"),  # no mobile one: the left-most phone name
        ("user_id,phone,携帯電話", "phone"),  # the contract's own name is taken as said
    ],
)
def test_r3_the_phone_column_is_the_mobile_one_unless_named_phone(tmp_path, header, read):
    names = header.split(",")
    row = ",".join(["u1"] + [f"0{i}0-1000-000{i}" for i in range(1, len(names))])
    users = read_users_csv(write(tmp_path / "users.csv", f"{header}\n{row}\n"))
    at = names.index(read)
    assert users["phone"].tolist() == [row.split(",")[at]]
    assert users.attrs["phone_columns"] == [read]
    others = [n for n in names[1:] if n != read]
    assert sorted(c for c in users.columns if c not in ("user_id", "phone")) == sorted(others)


def test_r3_files_naming_the_phone_column_differently_say_each_name(tmp_path):
    a = write(tmp_path / "a.csv", "user_id,携帯番号,電話番号\nu1,090,03\n")
    b = write(tmp_path / "b.csv", "user_id,phone\nu2,080\n")
    users = read_users_csvs([a, b])
    assert users["phone"].tolist() == ["090", "080"]
    assert users.attrs["phone_columns"] == ["携帯番号", "phone"]
