"""Errors travel (STYLE.md, #14): through Prefect result persistence and process pools
they must come back as the same type with the same line and attributes; each says
whether a retry can cure it, and the tree in ``smsops/errors.py`` names every one."""

from __future__ import annotations

import ast
import builtins
import inspect
import pickle
import re
from pathlib import Path

import pytest

from smsops import errors
from smsops.errors import Problem, SmsopsError, is_transient

CLASSES = sorted(
    (c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, SmsopsError)),
    key=lambda c: c.__name__,
)

# A value for each parameter an error class takes. A new class whose __init__ takes a
# parameter not named here fails test_every_error_pickles below until one is added.
SAMPLES: dict[str, object] = {
    "message": "delivery 7 to 090-1234-5678 failed",
    "rule": "R9",
    "source": "users.csv",
    "problems": [Problem(3, "phone", "not a mobile", "0312345678"), Problem(None, None, "x")],
    "problem": "'tags.__class__': names starting with '__' are not allowed",
}
DETAILS = {"needed": 5, "balance": 2, "note": "call 090-1234-5678"}


def build(cls: type[SmsopsError]) -> SmsopsError:
    params = inspect.signature(cls.__init__).parameters.values()
    args, takes_details = [], False
    for p in params:
        if p.name == "self" or (p.default is not p.empty and p.kind is not p.VAR_KEYWORD):
            continue
        if p.kind is p.VAR_KEYWORD:
            takes_details = True
            continue
        assert p.name in SAMPLES, f"{cls.__name__}({p.name}=...): add a sample to SAMPLES"
        args.append(SAMPLES[p.name])
    return cls(*args, **(DETAILS if takes_details else {}))


def test_every_error_class_of_smsops_and_the_flows_is_defined_in_errors_py():
    """Read, not imported (importing every module takes seconds): a class whose base is
    an exception, Python's or ours, is defined nowhere else."""
    exceptions = {n for n, v in vars(builtins).items() if isinstance(v, type)}
    exceptions = {n for n in exceptions if issubclass(getattr(builtins, n), BaseException)}
    bases = exceptions | {c.__name__ for c in CLASSES}
    root = Path(errors.__file__).parents[1]
    elsewhere = [
        f"{path.relative_to(root)}: {node.name}"
        for path in [*root.joinpath("smsops").rglob("*.py"), *root.joinpath("flows").rglob("*.py")]
        if path.name != "errors.py" or path.parent.name != "smsops"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
        and any(getattr(b, "id", getattr(b, "attr", None)) in bases for b in node.bases)
    ]
    assert elsewhere == [], "define them in smsops/errors.py and import them from there"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_pickles_to_the_same_type_line_and_attributes(cls):
    error = build(cls)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls
    assert str(again) == str(error) and again.args == error.args
    assert again.to_dict() == error.to_dict()
    assert vars(again) == vars(error) and vars(error)  # rule, source, problems, details...
    assert "090-1234-5678" not in pickle.dumps(error).decode("latin-1")  # masked before


def test_an_error_outside_the_tree_pickles_too():
    outside = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, BaseException) and c not in CLASSES
    ]
    # a new one: draw it in the tree, or list it here
    assert outside == [errors.BatchFailed, errors.ServeStopped, errors.Unstreamable]
    error = errors.BatchFailed("the database is locked", unavailable=True)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is errors.BatchFailed and str(again) == str(error)
    assert vars(again) == vars(error) == {"message": str(error), "unavailable": True}


def test_attributes_a_caller_reads_survive_the_round_trip():
    ticket = pickle.loads(pickle.dumps(errors.TicketError("R9", "not enough", needed=5)))
    assert (ticket.rule, ticket.details["needed"], ticket.code) == ("R9", 5, "tickets")
    bad = pickle.loads(pickle.dumps(errors.InputError("users.csv", SAMPLES["problems"])))
    assert bad.source == "users.csv" and bad.problems == SAMPLES["problems"]
    assert pickle.loads(pickle.dumps(errors.QueryError("the query is empty"))).problem == (
        "the query is empty"
    )


# --- which errors a retry can cure ------------------------------------------------------

TRANSIENT = {"StoreUnavailable"}  # a database away or locked past the busy timeout


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_only_an_unavailable_store_is_transient(cls):
    assert cls.transient is (cls.__name__ in TRANSIENT)
    assert is_transient(build(cls)) is cls.transient


def test_outside_errors_are_transient_only_when_a_timeout_or_a_lost_connection():
    assert is_transient(TimeoutError("gateway answer lost"))
    assert is_transient(ConnectionResetError())
    assert not is_transient(KeyError("a bug"))
    assert not is_transient(PermissionError("outbox"))


# --- the tree in the docstring ----------------------------------------------------------


def test_the_docstring_tree_draws_every_class_under_its_parent_with_its_code():
    tree = errors.__doc__.split("::", 1)[1].strip("\n").split("\n\n")[0]
    row = re.compile(r"(?P<indent>[ │├└─]*)(?P<name>\w+) +(?P<code>\w+)(?P<star> +\*)?")
    rows = {
        m["name"]: (len(m["indent"]), m["code"], bool(m["star"]))
        for m in map(row.match, tree.splitlines())
        if m
    }
    assert len(rows) == len(tree.splitlines())  # every line of the drawing is a class
    assert set(rows) == {c.__name__ for c in CLASSES}
    for cls in CLASSES:
        depth, code, star = rows[cls.__name__]
        assert (code, star) == (cls.code, cls.transient), cls.__name__
        if cls is not SmsopsError:
            assert depth == rows[cls.__base__.__name__][0] + 4, cls.__name__


def test_every_class_says_what_it_means_in_a_docstring():
    for cls in CLASSES:
        assert cls.__doc__, cls  # a class's own: Python does not inherit it


# --- the old import locations -------------------------------------------------------------


def test_errors_defined_elsewhere_before_are_still_importable_there():
    from smsops.domain.query import QueryError
    from smsops.reports.common import ReportError
    from smsops.services.inbound import ReportRefused
    from smsops.store.engine import StoreError, StoreUnavailable

    assert (QueryError, ReportError, ReportRefused, StoreError, StoreUnavailable) == (
        errors.QueryError,
        errors.ReportError,
        errors.ReportRefused,
        errors.StoreError,
        errors.StoreUnavailable,
    )
