"""The house keeps its shape (#14): no import circle among the parts of smsops and the
flows, and no import that runs upward — the front doors (CLI, flows, reports, receiver)
above the services, the services above the store and the gateways, those above the
domain. A part is a package (its ``__init__`` included) or a top-level module; imports
within a part do not count. Every other import does, those inside functions too (they
are how light commands stay light, not a way around the layers). ``smsops/__init__.py``,
the Python API's face, hands names on from every floor and stands above them all."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lower number = lower floor; a file may import its own floor or a lower one
FLOORS = {
    "smsops.i18n": 0,
    "smsops.logs": 0,
    "smsops.errors": 1,
    "smsops.clock": 1,
    "smsops.settings": 1,
    "smsops.refusals": 2,
    "smsops.domain": 2,
    "smsops.store": 3,
    "smsops.gateways": 3,
    "smsops.tables": 3,
    "smsops.synthetic": 3,
    "smsops.services": 4,
    "smsops.receiver": 5,
    "smsops.reports": 5,
    "flows": 5,
    "smsops.cli": 6,
}


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("smsops", "flows"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports (a ``from pkg import sub`` names sub)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    out.add(f"{base}.{alias.name}")
                elif base in modules:
                    out.add(base)
    return out - {name}


def _unit(name: str) -> str | None:
    """The part of the house a module belongs to: its package, or the module itself."""
    return max((k for k in FLOORS if name == k or name.startswith(k + ".")), key=len, default=None)


def _graph() -> dict[str, set[str]]:
    """Part -> the other parts its files import."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        unit = _unit(name)
        if unit is None or name in ("smsops",):  # the package's face: it only hands names on
            continue
        deps = {_unit(d) for d in _imports(name, path, modules)} - {unit, None}
        graph.setdefault(unit, set()).update(d for d in deps if d is not None)
    return graph


def _floor(unit: str) -> int:
    return FLOORS[unit]


def test_issue14_no_import_circle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_issue14_no_import_runs_upward():
    upward = [
        f"{unit} (floor {_floor(unit)}) -> {dep} (floor {_floor(dep)})"
        for unit, deps in sorted(_graph().items())
        for dep in sorted(deps)
        if _floor(dep) > _floor(unit)
    ]
    assert not upward, upward


def test_issue14_every_module_belongs_to_a_part_of_the_house():
    assert [n for n in _modules() if _unit(n) is None and n != "smsops"] == []
