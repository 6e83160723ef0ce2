"""The selection language of --query (issue: no one runs code through a selection).

Every query either compiles into the closed set of column conditions and selects what it
says, or is refused with one line naming the part refused — and nothing in it ever runs.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsops.domain import query
from smsops.domain.query import QueryError

USERS = pd.DataFrame(
    {
        "user_id": ["u0000001", "u0000002", "u0000003", "u0000004", "u0000005", "u0000006"],
        "phone": ["090-1111-2222", "08011112222", None, "09033334444", "0312345678", "090"],
        "tags": ["vip", "", "vip", None, "VIP", "new"],
        "email": ["a@x.com", "b@x.jp", None, "d@x.jp", "e@x.COM", "f@x.jp"],
        "registered_at": [
            "2023-12-31",
            "2024-01-01",
            "2024/02/01 10:00",
            None,
            "2025-06-01T09:00:00+09:00",
            "2019-01-05",
        ],
        "氏名": ["山田　太郎", "佐藤　花子", "山田　太郎", "山田太郎", None, "x"],
        "first name": ["Aiko", "Ren", None, "Aiko", "Mio", "Sora"],
        "points": ["120", "80", "x", None, "300", "100"],
    }
).astype("string[pyarrow]")


def picked(expr: str, frame: pd.DataFrame = USERS) -> list[str]:
    return query.select(frame, expr)["user_id"].tolist()


def by_hand(mask: pd.Series) -> list[str]:
    return USERS[mask.fillna(False).astype(bool)]["user_id"].tolist()


# --- what a selection says, it selects ----------------------------------------------------

# registered_at by hand, as Tokyo wall times
DATES = pd.Series(
    [
        pd.Timestamp("2023-12-31"),
        pd.Timestamp("2024-01-01"),
        pd.Timestamp("2024-02-01 10:00"),
        pd.NaT,
        pd.Timestamp("2025-06-01 09:00"),
        pd.Timestamp("2019-01-05"),
    ]
)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("tags == 'vip'", USERS["tags"] == "vip"),
        ("phone.str.startswith('090')", USERS["phone"].str.startswith("090")),
        ("`氏名` == '山田　太郎'", USERS["氏名"] == "山田　太郎"),
        ("氏名 == '山田　太郎'", USERS["氏名"] == "山田　太郎"),
        (
            "registered_at >= '2024-01-01' & ~email.str.endswith('.com')",
            (DATES >= "2024-01-01") & USERS["email"].notna() & ~USERS["email"].str.endswith(".com"),
        ),
        ("user_id in ['u0000002', 'u0000003']", USERS["user_id"].isin(["u0000002", "u0000003"])),
        ("user_id not in ['u0000002']", USERS["user_id"] != "u0000002"),
        ("tags.str.contains('vip', na=False)", USERS["tags"].str.contains("vip", regex=False)),
        ("tags.str.contains('VIP', case=False)", USERS["tags"].str.lower() == "vip"),
        ("`first name` == 'Aiko' and not tags == 'new'", pd.Series([1, 0, 0, 0, 0, 0]) == 1),
        ("points >= 100", pd.to_numeric(USERS["points"], errors="coerce") >= 100),
        ("90 < points <= 120", pd.Series([1, 0, 0, 0, 0, 1]) == 1),
        ("email.isna() | email.str.endswith('.jp')", pd.Series([0, 1, 1, 1, 0, 1]) == 1),
        ("phone.notna() & (tags == 'new' | tags == 'VIP')", USERS["tags"].isin(["new", "VIP"])),
        ("registered_at < '2020-01-01'", DATES < "2020-01-01"),
        ("tags.str.contains('^v', regex=True)", USERS["tags"].str.startswith("v")),
    ],
)
def test_a_selection_picks_what_it_says(expr, expected):
    assert picked(expr) == by_hand(expected)


def test_a_missing_value_meets_no_condition_not_even_negated():
    # tags of u0000004 is missing: neither tags == 'vip' nor ~(tags == 'vip') picks it
    both = set(picked("tags == 'vip'")) | set(picked("~(tags == 'vip')"))
    assert "u0000004" not in both
    assert "u0000004" in picked("tags.isna() | ~(tags == 'vip')")
    assert "u0000004" in picked("tags.str.startswith('z', na=True)")


def test_dates_with_an_offset_compare_in_japan_time():
    frame = pd.DataFrame(
        {"user_id": ["a", "b"], "registered_at": ["2024-01-01T00:30:00+09:00", "2023-12-31T15:30Z"]}
    ).astype("string[pyarrow]")
    # both are 2024-01-01 00:30 in Tokyo
    assert picked("registered_at >= '2024-01-01'", frame) == ["a", "b"]


def test_a_text_column_compares_as_text_even_with_a_date_shaped_literal():
    frame = pd.DataFrame({"user_id": ["a", "b"], "code": ["2024-01-01x", "zz"]})
    assert picked("code >= '2024-01-01'", frame) == ["a", "b"]


# --- what is not in the language is refused, naming the part ----------------------------


@pytest.mark.parametrize(
    ("expr", "named"),
    [
        (
            "user_id.__class__.__init__.__globals__['sys'].modules['os'].system('x') == 0",
            "'user_id.__class__'",
        ),
        ("__import__('os').system('x') == 0", "'__import__'"),
        ("open('/etc/passwd').read() == ''", "'open'"),
        ("eval('1') == 1", "'eval'"),
        ("getattr(tags, 'upper') == 1", "'getattr'"),
        ("tags.upper() == 'VIP'", "'tags.upper()'"),
        ("tags.str.upper() == 'VIP'", "'tags.str.upper()'"),
        ("tags.str.contains('v', flags=2)", "no option 'flags'"),
        ("phone.str.startswith(tags)", "takes a string"),
        ("phone.startswith('090')", "method not allowed"),
        ("tags[0] == 'v'", "subscripts are not allowed"),
        ("@name == 'x'", "'@' variables"),
        ("(lambda: 1)() == 1", "'(lambda: 1)()'"),
        ("[x for x in tags] == []", "listcomp"),
        ("f'{tags}' == 'vip'", "f-strings"),
        ("tags == None", "'None'"),
        ("tags == True", "'True'"),
        ("tags", "not a condition"),
        ("'vip'", "not a condition"),
        ("points + 1 > 2", "arithmetic"),
        ("tags in 'vip'", "takes a list"),
        ("tags == ['vip']", "not a list"),
        ("'a' == 'b'", "needs a column"),
        ("registered_at >= '2024-13-45'", "is not a date"),
        ("tags.str.contains('(', regex=True)", "RE2"),
        ("tags == 'vip'; import os", "is not a query"),
        ("(tags := 'x') == 'x'", "':='"),
        ("`unclosed == 1", "not closed"),
        ("tags == 'unclosed", "not closed"),
        ("", "empty"),
        ("~" * 5000 + "tags == 'a'", "characters long"),
        ("(" * 300 + "tags == 'a'" + ")" * 300, "nested"),
    ],
)
def test_what_is_not_a_selection_is_refused_naming_the_part(expr, named):
    with pytest.raises(QueryError) as refused:
        query.parse(expr)
    message = str(refused.value)
    assert message.startswith("--query: ") and named in message
    assert "\n" not in message


def test_an_unknown_column_is_refused_naming_it_and_the_columns():
    with pytest.raises(QueryError, match=r"no column 'vip_level'.*user_id, phone"):
        picked("vip_level == 'gold'")


def test_the_refusal_pickles(tmp_path):
    # Prefect persists and re-raises errors across processes
    with pytest.raises(QueryError) as refused:
        query.parse("tags.__class__ == 1")
    again = pickle.loads(pickle.dumps(refused.value))
    assert type(again) is QueryError and str(again) == str(refused.value)


# --- nothing in a query ever runs --------------------------------------------------------

_SEEN: list[tuple[str, tuple]] = []
_WATCHING = [False]
# What running code would raise: exec/eval of code, imports, file and process access.
_DANGER = ("exec", "import", "open", "os.", "subprocess.", "shutil.", "socket.", "ctypes.")


def _audit(event: str, args: tuple) -> None:
    if _WATCHING[0] and (event.startswith(_DANGER) or event == "compile"):
        _SEEN.append((event, args[1:2] if event == "compile" else args[:1]))


sys.addaudithook(_audit)  # a hook cannot be removed; it records only while watching


def watched(fn, *args):
    _SEEN.clear()
    _WATCHING[0] = True
    try:
        return fn(*args)
    finally:
        _WATCHING[0] = False


def _ran(events: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """Events other than ast.parse's own compile of the query (filename '<unknown>')."""
    return [e for e in events if e != ("compile", ("<unknown>",))]


CANARY = Path("/tmp/smsops-query-canary")
_columns = st.sampled_from(
    ["tags", "phone", "user_id", "`氏名`", "`first name`", "points", "registered_at", "nosuch"]
)
_literals = st.one_of(
    st.sampled_from(["'vip'", "'090'", "'2024-01-01'", "100", "-3.5", "''", "'\\''", "None"]),
    st.text(max_size=8).map(repr),
    st.integers(-1000, 1000).map(str),
)
_hostile = st.sampled_from(
    [
        f"open('{CANARY}', 'w')",
        f"__import__('os').system('touch {CANARY}')",
        "user_id.__class__.__init__.__globals__['sys'].modules['os']",
        "eval('1')",
        "exec('x=1')",
        "getattr(tags, '__class__')",
        "tags.__dict__",
        "(lambda: 0)()",
        "[c for c in ().__class__.__base__.__subclasses__()]",
        "@canary",
        "tags.str.cat(tags)",
        "breakpoint()",
        "globals()",
    ]
)


def _conditions(children):
    compare = st.tuples(
        st.one_of(_columns, _literals, _hostile),
        st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in"]),
        st.one_of(_literals, _columns, _hostile, st.lists(_literals, max_size=3).map(str)),
    ).map(" ".join)
    method = st.tuples(
        _columns,
        st.sampled_from(
            [".str.startswith", ".str.endswith", ".str.contains", ".isna", ".notna", ".upper"]
        ),
        st.sampled_from(["()", "('v')", "('v', na=True)", "('^v', regex=True)", "(x=1)"]),
    ).map("".join)
    return st.one_of(
        compare,
        method,
        _hostile,
        st.tuples(children, st.sampled_from([" & ", " | ", " and ", " or "]), children).map(
            "".join
        ),
        children.map(lambda c: f"~({c})"),
        children.map(lambda c: f"not ({c})"),
    )


expressions = st.recursive(
    st.one_of(_hostile, _columns, st.tuples(_columns, _literals).map(" == ".join)),
    _conditions,
    max_leaves=8,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions)
def test_random_expressions_are_safe_selections_or_refused_and_never_run(expr):
    query.select(USERS, "tags.notna() & phone.str.contains('0') | tags.isna()")  # warm pandas
    try:
        parsed = watched(query.parse, expr)
    except QueryError as refused:
        assert _ran(_SEEN) == [], (expr, _SEEN)
        assert str(refused).startswith("--query: ")
        return
    assert _ran(_SEEN) == [], (expr, _SEEN)
    try:
        chosen = watched(parsed.select, USERS)
    except QueryError as refused:  # an unknown column, found when the data is seen
        assert "no column" in str(refused)
        return
    finally:
        assert _ran(_SEEN) == [], (expr, _SEEN)
    assert set(chosen.index) <= set(USERS.index)
    assert list(chosen.index) == sorted(chosen.index)  # user order kept (R5, R10)
    assert not CANARY.exists()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_a_selection_or_one_refusal(text):
    try:
        query.select(USERS, text)
    except QueryError as refused:
        assert "\n" not in str(refused)
