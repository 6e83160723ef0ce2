"""#14: one dispatch loop and one send-now decision. The CLI, the notebooks and the flows
all send a delivery through ``dispatch.drive`` (the flows pass their task as the step),
and decide "send it now" by ``Created.sends_now`` (R12); a second loop or decision
written elsewhere fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.joinpath("smsops").rglob("*.py"), *ROOT.joinpath("flows").rglob("*.py")])


def _calls(node: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Name) and n.func.id == name)
            or (isinstance(n.func, ast.Attribute) and n.func.attr == name)
        )
        for n in ast.walk(node)
    )


def _names(node: ast.AST, name: str) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id == name)
        or (isinstance(n, ast.Attribute) and n.attr == name)
        for n in ast.walk(node)
    )


def test_issue14_only_drive_loops_over_chunks():
    loops = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in SOURCES
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.While | ast.For) and _names(node, "send_chunk")
    ]
    assert loops == [], f"a chunk loop outside dispatch.drive: {loops}"
    # and drive is the one that sends: the flows hand it their task
    flows = (ROOT / "flows" / "campaigns.py").read_text(encoding="utf-8")
    assert _calls(ast.parse(flows), "drive")


def test_issue14_r12_send_now_is_decided_by_created_sends_now_only():
    """No ``status == / != QUEUED`` outside the property that decides it (``cancel``'s
    "not started yet", ``status not in (SCHEDULED, QUEUED)``, is another question)."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Compare)
                and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops)
                and _names(node, "QUEUED")
            ):
                if path.as_posix().endswith("deliveries/create.py") and _names(node, "self"):
                    continue  # Created.sends_now itself
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], f"a send-now decision outside Created.sends_now: {found}"
