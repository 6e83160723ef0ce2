"""The selection language of ``--query`` (and of the flows' and notebooks' ``query``):
a small, closed set of column conditions, parsed here and evaluated as vectorized pandas
and pyarrow operations. Nothing in a query is ever executed as Python.

A query is read with :mod:`ast` (never ``eval``), after backquoted names are set aside and
``&``/``|`` are given ``and``/``or``'s low precedence (as pandas' ``DataFrame.query``
does, so ``a >= 1 & b == 'x'`` means what it says). Every node is then checked against a
whitelist while it is compiled into a function of the frame; anything else is refused by
:class:`QueryError`, naming the part refused, before any data is looked at.

What a query may hold:

- column names — any header, Japanese included; backquote one that is not a plain
  word: ```氏名` == '山田　太郎'``, ```first name` == 'Aiko'``;
- literals: strings, numbers, and lists of them (``user_id in ['u1', 'u2']``);
- comparisons ``==  !=  <  <=  >  >=  in  not in`` between a column and a literal (or two
  columns); a number compares numerically, a date-shaped string (``'2024-01-01'``) with
  ``<``, ``<=``, ``>``, ``>=`` or ``==`` compares as a date when the column holds dates;
- ``&``/``and``, ``|``/``or``, ``~``/``not``, parentheses;
- the methods ``col.str.startswith(s)``, ``col.str.endswith(s)``, ``col.str.contains(s)``
  (plain text unless ``regex=True``, which uses RE2: no catastrophic backtracking), each
  taking ``case=`` and ``na=``, and ``col.isna()``, ``col.notna()``.

A missing value never satisfies a condition on it — not even under ``~`` — unless
``na=True`` says so: ``email.isna() | ~email.str.endswith('.com')`` picks users without
an e-mail too.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from smsops.errors import QueryError  # defined there, importable here

MAX_LENGTH = 4_000  # characters; a selection is a line, not a program
METHODS = ("str.startswith", "str.endswith", "str.contains", "isna", "notna")
_STR_METHODS = {"startswith", "endswith", "contains"}
_NULL_METHODS = {"isna", "notna"}
_KEYWORDS = {"case", "na", "regex"}
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")
_OFFSET = r"(?:Z|[+-]\d{2}:?\d{2})$"
_PLACEHOLDER = "__bq{}__"

# A condition's value is a nullable boolean Series (NA where a value was missing).
Mask: TypeAlias = "pd.Series[Any]"
Compiled: TypeAlias = Callable[[pd.DataFrame], "pd.Series[Any]"]


@dataclass(frozen=True)
class Query:
    """A checked query: ``select(frame)`` keeps the rows it picks, in their order."""

    text: str
    _mask: Compiled
    columns: frozenset[str]

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        """True for every row the query picks (a plain bool Series indexed like frame)."""
        missing = sorted(c for c in self.columns if _column(frame, c) is None)
        if missing:
            known = ", ".join(map(str, frame.columns))
            raise QueryError(f"no column {missing[0]!r} (columns: {known})")
        picked = self._mask(frame)
        return picked.fillna(False).astype(bool)

    def select(self, frame: pd.DataFrame) -> pd.DataFrame:
        return frame[self.mask(frame)]


def select(frame: pd.DataFrame, text: str) -> pd.DataFrame:
    """The rows of ``frame`` that ``text`` picks; refused with one :class:`QueryError`."""
    return parse(text).select(frame)


def parse(text: str) -> Query:
    """Check ``text`` and compile it; nothing is evaluated.

    >>> parse("tags == 'vip' & phone.str.startswith('090')").columns == {'tags', 'phone'}
    True
    """
    if not isinstance(text, str) or not text.strip():
        raise QueryError("the query is empty")
    if len(text) > MAX_LENGTH:
        raise QueryError(f"the query is {len(text):,} characters long (at most {MAX_LENGTH:,})")
    source, names = _prepare(text)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise QueryError(f"{_short(text)!r} is not a query: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise QueryError(f"{_short(text)!r} is too deeply nested or holds a NUL") from None
    compiler = _Compiler(names)
    try:
        compiled = compiler.condition(tree.body)
    except RecursionError:
        raise QueryError(f"{_short(text)!r} is nested too deeply") from None
    return Query(text, compiled, frozenset(compiler.columns))


# --- reading the text -------------------------------------------------------------------


def _prepare(text: str) -> tuple[str, dict[str, str]]:
    """The text Python's parser can read: backquoted names become placeholders, ``&`` and
    ``|`` become ``and`` and ``or`` (their precedence in a selection), outside strings."""
    out: list[str] = []
    names: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ("'''", '"""') else c
            j = i + len(quote)
            while j < n and not text.startswith(quote, j):
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise QueryError(f"a string is not closed: {text[i : i + 20]!r}")
            out.append(text[i : j + len(quote)])
            i = j + len(quote)
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0 or j == i + 1:
                raise QueryError(f"a backquoted column name is not closed: {text[i : i + 20]!r}")
            placeholder = _PLACEHOLDER.format(len(names))
            names[placeholder] = text[i + 1 : j]
            out.append(f" {placeholder} ")
            i = j + 1
        elif c in "&|":
            out.append(" and " if c == "&" else " or ")
            i += 1
        elif c == "@":
            raise QueryError("'@' variables are not allowed: write the value itself")
        else:
            out.append(c)
            i += 1
    return "".join(out), names


# --- checking and compiling -------------------------------------------------------------


@dataclass(frozen=True)
class _Col:
    name: str


@dataclass(frozen=True)
class _Lit:
    value: str | int | float | tuple[str | int | float, ...]


_Operand = _Col | _Lit
_FLIP = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}
_OPS: dict[type, str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}


class _Compiler:
    """Walks the tree once: every node is either known and compiled, or refused."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.columns: set[str] = set()

    def show(self, node: ast.AST) -> str:
        text = ast.unparse(node)
        for placeholder, name in self.names.items():
            text = text.replace(placeholder, f"`{name}`")
        return _short(text)

    def refuse(self, node: ast.AST, why: str) -> QueryError:
        return QueryError(f"{self.show(node)!r}: {why}")

    def refuse_part(self, node: ast.AST) -> QueryError:
        """Refuse a node outside the language, naming its first dunder if it has one
        (the usual way out of a sandbox), else the first call, else the node itself."""
        parts = list(ast.walk(node))
        dunders = [p for p in parts if _dunders_of(p, self.names)]
        if dunders:  # the innermost, as read from the left: user_id.__class__
            first = min(dunders, key=lambda p: (p.end_lineno, p.end_col_offset))  # type: ignore[attr-defined]
            return self.refuse(first, "names starting with '__' are not allowed")
        calls = [p for p in parts if isinstance(p, ast.Call)]
        if calls:
            first = min(calls, key=lambda p: (p.end_lineno, p.end_col_offset))  # type: ignore[attr-defined]
            return self.refuse(first, self.call_refusal(first))
        return self.refuse(node, _not_allowed(node))

    def call_refusal(self, node: ast.Call) -> str:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _STR_METHODS | _NULL_METHODS:
            return "a method here is a condition, not a value; use it alone"
        if isinstance(func, ast.Attribute):
            return f"method not allowed ({_allowed()})"
        return f"calling {self.show(func)!r} is not allowed ({_allowed()})"

    # conditions: what a query, and each side of and/or/not, must be
    def condition(self, node: ast.expr) -> Compiled:
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v) for v in node.values]
            both = isinstance(node.op, ast.And)
            return lambda f: _combine([p(f) for p in parts], both)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.Invert):
            inner = self.condition(node.operand)
            return lambda f: ~inner(f)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.method(node)
        if isinstance(node, ast.Name) or _is_literal(node):
            raise self.refuse(node, "not a condition; compare it, e.g. tags == 'vip'")
        raise self.refuse_part(node)

    def compare(self, node: ast.Compare) -> Compiled:
        steps = []
        following = self.operand(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            left, right = following, self.operand(right_node)
            following = right  # a chain (1 < age < 5) goes on from the original right side
            if type(op) not in _OPS:
                raise self.refuse(node, f"{type(op).__name__} is not a comparison smsops knows")
            symbol = _OPS[type(op)]
            flippable = symbol not in ("in", "not in")
            if isinstance(left, _Lit) and isinstance(right, _Col) and flippable:
                left, right, symbol = right, left, _OPS[_FLIP.get(type(op), type(op))]
            if not isinstance(left, _Col):
                raise self.refuse(node, "a comparison needs a column on its left")
            if symbol in ("in", "not in"):
                if not (isinstance(right, _Lit) and isinstance(right.value, tuple)):
                    raise self.refuse(node, f"'{symbol}' takes a list: col in ['a', 'b']")
            elif isinstance(right, _Lit) and isinstance(right.value, tuple):
                raise self.refuse(node, f"'{symbol}' compares with one value, not a list")
            if isinstance(right, _Lit) and isinstance(right.value, str):
                self.check_date(node, right.value)
            steps.append(_comparison(left, symbol, right))
        return lambda f: _combine([s(f) for s in steps], True)

    def check_date(self, node: ast.AST, value: str) -> None:
        if _DATE.fullmatch(value.strip()) and pd.isna(_dates(pd.Series([value])).iloc[0]):
            raise self.refuse(node, f"{value!r} is not a date")

    def operand(self, node: ast.expr) -> _Operand:
        if isinstance(node, ast.Name):
            return _Col(self.column(node))
        if _is_literal(node):
            return _Lit(_literal(node))
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            values = []
            for element in node.elts:
                if not _is_literal(element):
                    raise self.refuse(element, "a list holds only strings and numbers")
                values.append(_literal(element))
            return _Lit(tuple(values))  # type: ignore[arg-type]
        if isinstance(node, ast.Constant):
            raise self.refuse(node, "only strings and numbers are values (for missing, isna())")
        if isinstance(node, ast.BinOp):
            raise self.refuse(node, "arithmetic is not allowed (quote a date: '2024-01-01')")
        raise self.refuse_part(node)

    def column(self, node: ast.Name) -> str:
        name = self.names.get(node.id, node.id)
        if node.id not in self.names and node.id.startswith("__"):
            raise self.refuse(node, "names starting with '__' are not allowed")
        self.columns.add(name)
        return name

    def method(self, node: ast.Call) -> Compiled:
        func = node.func
        if _dunders(node, self.names):
            raise self.refuse_part(node)
        if not isinstance(func, ast.Attribute):
            raise self.refuse(node, self.call_refusal(node))
        target = func.value
        if func.attr in _STR_METHODS and isinstance(target, ast.Attribute):
            if target.attr != "str" or not isinstance(target.value, ast.Name):
                raise self.refuse(node, f"method not allowed ({_allowed()})")
            column = self.column(target.value)
            return self.string_method(node, column, func.attr)
        if func.attr in _NULL_METHODS and isinstance(target, ast.Name):
            if node.args or node.keywords:
                raise self.refuse(node, f"{func.attr}() takes no arguments")
            column = self.column(target)
            wanted = func.attr == "isna"
            return lambda f: pd.Series(
                _column(f, column).isna().to_numpy() == wanted,  # type: ignore[union-attr]
                index=f.index,
                dtype="boolean",
            )
        raise self.refuse(node, f"method not allowed ({_allowed()})")

    def string_method(self, node: ast.Call, column: str, name: str) -> Compiled:
        if len(node.args) != 1:
            raise self.refuse(node, f"str.{name}() takes one text")
        pattern = self.operand(node.args[0])
        values = pattern.value if isinstance(pattern, _Lit) else None
        texts = values if isinstance(values, tuple) else (values,)
        if not all(isinstance(t, str) for t in texts) or (name == "contains" and len(texts) > 1):
            raise self.refuse(node, f"str.{name}() takes a string")
        options = {"case": True, "na": False, "regex": False}
        for keyword in node.keywords:
            if keyword.arg not in _KEYWORDS or (keyword.arg == "regex" and name != "contains"):
                raise self.refuse(node, f"str.{name}() has no option {keyword.arg!r}")
            value = keyword.value
            if not (isinstance(value, ast.Constant) and isinstance(value.value, bool)):
                raise self.refuse(node, f"{keyword.arg}= takes True or False")
            options[keyword.arg] = value.value
        if options["regex"]:
            try:  # compiled once here, by RE2, so a bad pattern is refused before any data
                pc.match_substring_regex(pa.array([""]), texts[0], ignore_case=True)
            except pa.ArrowInvalid as exc:
                raise self.refuse(node, f"not a regular expression RE2 reads: {exc}") from None
        return _string_test(column, name, tuple(texts), **options)  # type: ignore[arg-type]


# --- evaluating (vectorized) -------------------------------------------------------------


def _column(frame: pd.DataFrame, name: str) -> pd.Series | None:
    """The column ``name`` names: exactly, else after NFKC (how Python reads identifiers,
    so a full-width header written bare still finds its column)."""
    if name in frame.columns:
        return frame[name]
    wanted = unicodedata.normalize("NFKC", name)
    for column in frame.columns:
        if unicodedata.normalize("NFKC", str(column)) == wanted:
            return frame[column]
    return None


def _series(frame: pd.DataFrame, name: str) -> pd.Series:
    found = _column(frame, name)
    assert found is not None  # Query.mask checked every column first
    return found


def _combine(masks: list[Mask], both: bool) -> Mask:
    result = masks[0]
    for m in masks[1:]:
        result = (result & m) if both else (result | m)
    return result


def _text(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
        s = s.astype(object).where(s.notna(), None).map(str, na_action="ignore")
    return s.astype("string[pyarrow]")


def _numbers(s: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("Float64")
    return pd.to_numeric(_text(s).str.strip(), errors="coerce").astype("Float64")


def _dates(s: pd.Series, text: bool = False) -> pd.Series:
    """A column (or literal) of dates as naive wall times; what is not a date is NaT.
    Values with an offset are taken to Asia/Tokyo wall time, the default account zone."""
    t = _text(s).str.strip().str.replace("/", "-", regex=False).str.replace(".", "-", regex=False)
    # '.' also separates seconds from fractions: put it back after the time
    t = t.str.replace(r"(\d{2}:\d{2}:\d{2})-(\d+)", r"\1.\2", regex=True)
    aware = t.str.contains(_OFFSET, regex=True).fillna(False).astype(bool)
    naive = pd.to_datetime(t.where(~aware), errors="coerce", format="ISO8601")
    if aware.any():
        zoned = pd.to_datetime(t.where(aware), errors="coerce", format="ISO8601", utc=True)
        local = zoned.dt.tz_convert("Asia/Tokyo").dt.tz_localize(None)
        naive = naive.where(~aware, local.astype(naive.dtype))
    return naive


def _looks_dated(s: pd.Series) -> bool:
    """Most present values of the column read as dates."""
    present = s.dropna()
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return True
    if present.empty:
        return False
    sample = present.iloc[:: max(len(present) // 1000, 1)]
    return bool(_dates(sample).notna().mean() >= 0.5)


def _nullable(values: Any, index: pd.Index) -> Mask:
    return pd.Series(pd.array(values, dtype="boolean"), index=index)


def _compare_values(left: pd.Series, symbol: str, right: Any) -> Mask:
    result = {
        "==": lambda: left == right,
        "!=": lambda: left != right,
        "<": lambda: left < right,
        "<=": lambda: left <= right,
        ">": lambda: left > right,
        ">=": lambda: left >= right,
    }[symbol]()
    missing = left.isna().to_numpy()
    if isinstance(right, pd.Series):
        missing = missing | right.isna().to_numpy()
    values = np.asarray(result.fillna(False) if hasattr(result, "fillna") else result, bool)
    out = pd.array(values, dtype="boolean")
    out[missing] = pd.NA
    return pd.Series(out, index=left.index)


def _comparison(left: _Col, symbol: str, right: _Operand) -> Compiled:
    if isinstance(right, _Lit) and isinstance(right.value, tuple):
        values = right.value

        def member(f: pd.DataFrame) -> Mask:
            s = _series(f, left.name)
            texts = [v for v in values if isinstance(v, str)]
            numbers = [v for v in values if not isinstance(v, str)]
            hit = np.zeros(len(s), bool)
            if texts:
                hit |= _text(s).isin(texts).fillna(False).to_numpy(bool)
            if numbers:
                hit |= _numbers(s).isin(numbers).fillna(False).to_numpy(bool)
            mask = _nullable(hit if symbol == "in" else ~hit, f.index)
            mask[s.isna().to_numpy()] = pd.NA
            return mask

        return member

    def compare(f: pd.DataFrame) -> Mask:
        s = _series(f, left.name)
        if isinstance(right, _Col):
            other = _series(f, right.name)
            return _compare_values(_text(s), symbol, _text(other))
        value = right.value
        if isinstance(value, str):
            if _DATE.fullmatch(value.strip()) and symbol != "!=" and _looks_dated(s):
                when = _dates(pd.Series([value])).iloc[0]
                return _compare_values(_dates(s), symbol, when)
            return _compare_values(_text(s), symbol, value)
        return _compare_values(_numbers(s), symbol, value)

    return compare


def _string_test(
    column: str, name: str, texts: tuple[str, ...], *, case: bool, na: bool, regex: bool
) -> Compiled:
    def test(f: pd.DataFrame) -> Mask:
        s = _series(f, column)
        arr = pa.array(_text(s), type=pa.large_string())
        hit = None
        for text in texts:
            if name == "startswith":
                one = pc.starts_with(arr, text, ignore_case=not case)
            elif name == "endswith":
                one = pc.ends_with(arr, text, ignore_case=not case)
            elif regex:
                one = pc.match_substring_regex(arr, text, ignore_case=not case)
            else:
                one = pc.match_substring(arr, text, ignore_case=not case)
            hit = one if hit is None else pc.or_kleene(hit, one)
        assert hit is not None
        values = pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
        mask = pd.Series(pd.array(values, dtype="boolean"), index=f.index)
        mask[s.isna().to_numpy()] = True if na else pd.NA
        return mask

    return test


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dunders_of(node: ast.AST, placeholders: dict[str, str]) -> bool:
    """``node`` itself is a name or attribute starting with '__' (not a backquoted name)."""
    name = getattr(node, "attr", None) or getattr(node, "id", None)
    return isinstance(name, str) and name.startswith("__") and name not in placeholders


def _dunders(node: ast.AST, placeholders: dict[str, str]) -> bool:
    return any(_dunders_of(part, placeholders) for part in ast.walk(node))


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = node.operand
        return (
            isinstance(inner, ast.Constant)
            and isinstance(inner.value, int | float)
            and not (isinstance(inner.value, bool))
        )
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str | int | float)
        and not isinstance(node.value, bool)
    )


def _literal(node: ast.expr) -> str | int | float:
    if isinstance(node, ast.UnaryOp):
        value = _literal(node.operand)
        return -value if isinstance(node.op, ast.USub) else value  # type: ignore[operator]
    assert isinstance(node, ast.Constant)
    return node.value  # type: ignore[return-value]  # _is_literal checked the type


def _allowed() -> str:
    return "allowed: " + ", ".join(f"{m}()" for m in METHODS)


def _not_allowed(node: ast.AST) -> str:
    kinds = {
        ast.Attribute: "attributes are not allowed (only column names and "
        + ", ".join(f"{m}()" for m in METHODS)
        + ")",
        ast.Subscript: "subscripts are not allowed (backquote a column name: `name`)",
        ast.Lambda: "lambda is not allowed",
        ast.JoinedStr: "f-strings are not allowed",
        ast.NamedExpr: "':=' is not allowed",
        ast.IfExp: "'if … else' is not allowed",
        ast.Starred: "'*' is not allowed",
    }
    for kind, why in kinds.items():
        if isinstance(node, kind):
            return why
    return f"{type(node).__name__.lower()} is not part of a selection"
