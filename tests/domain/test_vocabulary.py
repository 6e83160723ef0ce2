"""Issue #14, one vocabulary: every status and reason is spelled once, in
``smsops/domain/vocabulary.py``; ``smsops/`` and ``flows/`` import it.

The scan reads each source file with ``ast`` and counts a string literal that equals a
vocabulary word (any member of the enums below) only where it plays the part of a status
or a reason — its *value role*:

1. an operand of ``==``, ``!=``, ``is``, or an element of the literal collection on the
   right of ``in`` / ``not in`` (``status == "sent"``, ``s in ("queued", "paused")``);
2. the value of a keyword argument named ``status``, ``error``, ``reason`` or
   ``dlr_status`` (``.values(status="error", error="opted_out")``);
3. an element of a tuple, list or set literal whose elements are all vocabulary words
   (``FINAL = ("sent", "failed")``, ``isin=["sent", "insufficient_tickets"]``);
4. a value assigned to a name, attribute or subscript whose name is ALL_CAPS or holds
   ``status``, ``error``, ``reason`` or ``fate``; a value returned; a dict *value* —
   each as the literal itself or a branch of ``a if c else b``;
5. a word in single quotes inside a longer literal that is not a docstring (SQL text:
   ``"… WHERE status = 'pending'"``).

Not counted, because there the word names something else: dict keys and subscripts
(``{"sent": 3}``, ``frame["error"]`` — JSON keys and column names), the left operand of
``in`` (``"sent" in result``), lists that mix in other words (column lists such as
``["seq", "status", "error"]``), positional call arguments (``N_("sent")``,
``.label("error")``, ``counts.get("sent", 0)``), docstrings and comments, and names other
than those of rule 4 (``code = "error"``, the ``--json`` error code).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from smsops.domain import vocabulary
from smsops.domain.vocabulary import (
    DeliveryStatus,
    DlrStatus,
    Exclusion,
    ItemError,
    ItemStatus,
    ReplyAction,
)

ROOT = Path(__file__).resolve().parents[2]
VOCABULARY = Path(vocabulary.__file__).resolve()
WORDS = frozenset(
    str(m)
    for enum in (ItemStatus, DeliveryStatus, ItemError, Exclusion, DlrStatus, ReplyAction)
    for m in enum
)
KEYWORDS = {"status", "error", "reason", "dlr_status"}
NAMED = re.compile(r"status|error|reason|fate", re.IGNORECASE)
QUOTED = re.compile(r"'([a-z_]+)'")


def _word(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value in WORDS


def _values(node: ast.AST | None) -> Iterator[ast.Constant]:
    """The vocabulary literals ``node`` is or chooses between (``a if c else b``)."""
    if isinstance(node, ast.IfExp):
        yield from _values(node.body)
        yield from _values(node.orelse)
    elif _word(node):
        assert isinstance(node, ast.Constant)
        yield node


def _target_name(target: ast.AST) -> str:
    while isinstance(target, ast.Subscript | ast.Starred):
        target = target.value
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return ""


def _named(target: ast.AST) -> bool:
    if isinstance(target, ast.Tuple | ast.List):
        return any(_named(t) for t in target.elts)
    name = _target_name(target)
    return bool(name) and (name.isupper() or bool(NAMED.search(name)))


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def value_literals(source: str) -> Iterator[tuple[int, str]]:
    """(line, word) of each vocabulary literal in a value role (see the module docstring)."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found: dict[int, ast.Constant] = {}

    def add(nodes: Iterator[ast.Constant] | list[ast.Constant]) -> None:
        for n in nodes:
            found[id(n)] = n

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
                if isinstance(op, ast.Eq | ast.NotEq | ast.Is | ast.IsNot):
                    add([*_values(left), *_values(right)])
                elif isinstance(op, ast.In | ast.NotIn) and isinstance(
                    right, ast.Tuple | ast.List | ast.Set
                ):
                    add([n for e in right.elts for n in _values(e)])
        elif isinstance(node, ast.keyword) and node.arg in KEYWORDS:
            add(_values(node.value))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set) and node.elts:
            if all(_word(e) for e in node.elts):
                add([e for e in node.elts if isinstance(e, ast.Constant)])
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_named(t) for t in targets):
                add(_values(node.value))
        elif isinstance(node, ast.Return):
            add(_values(node.value))
        elif isinstance(node, ast.Dict):
            add([n for v in node.values for n in _values(v)])
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docs
            and node.value not in WORDS
        ):
            for quoted in QUOTED.findall(node.value):
                if quoted in WORDS:
                    yield node.lineno, f"'{quoted}' in SQL text"
    for n in sorted(found.values(), key=lambda n: (n.lineno, n.col_offset)):
        yield n.lineno, repr(n.value)


def spellings() -> list[str]:
    """``file:line word`` for each status or reason spelled outside the vocabulary."""
    out = []
    for folder in ("smsops", "flows"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.resolve() == VOCABULARY:
                continue
            for line, word in value_literals(path.read_text(encoding="utf-8")):
                out.append(f"{path.relative_to(ROOT)}:{line} {word}")
    return out


def test_statuses_and_reasons_are_spelled_only_in_the_vocabulary() -> None:
    found = spellings()
    assert not found, "spell these with smsops.domain.vocabulary:\n" + "\n".join(found)


def test_the_scan_counts_value_roles_and_not_keys_or_columns() -> None:
    source = '''
"""A docstring may say 'sent'."""
a = status == "sent"
b = s in ("queued", "paused")
c = conn.values(status="error", error="opted_out")
FINAL = ("failed", "cancelled")
status = "scheduled" if x else "queued"
fates[mask] = "pending"
d = {"status": "cancelled"}
q = "UPDATE delivery_items SET status = 'sent'"
def f():
    return "sending"
k = {"sent": 3}["sent"]
m = "sent" in result
cols = ["seq", "status", "error"]
n = N_("sent"), counts.get("error", 0)
code = "error"
'''
    words = sorted(w for _, w in value_literals(source))
    assert words == sorted(
        [
            "'sent'",
            "'queued'",
            "'paused'",
            "'error'",
            "'opted_out'",
            "'failed'",
            "'cancelled'",
            "'scheduled'",
            "'queued'",
            "'pending'",
            "'cancelled'",
            "'sending'",
            "'sent' in SQL text",
        ]
    )


def test_members_are_their_strings() -> None:
    assert ItemStatus.SENT == "sent" and f"{ItemError.OUTCOME_UNKNOWN}" == "outcome_unknown"
    assert str(DeliveryStatus.PARTIALLY_SENT) == "partially_sent"
    assert "sending" in set(ItemStatus)  # the legacy status old databases hold
