"""Issue #12, fast start: a command that touches no frame imports no frame library.

Each command runs as the real CLI in a fresh interpreter, on a store that holds a sent
and a scheduled delivery (so it does its real work), and reports which heavy modules
were loaded when it exited. No timing here: benchmarks/start.py measures the speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from support import mobile

# Libraries a light command must not load: frames and phone metadata (the domain),
# Prefect, and what only reports and gateways need.
HEAVY = (
    "numpy",
    "pandas",
    "pyarrow",
    "pandera",
    "phonenumbers",
    "prefect",
    "papermill",
    "matplotlib",
    "httpx",
)

# Runs ``smsops`` once per argv given (as JSON) in this fresh interpreter and writes, after
# each, its exit code, what it printed on stdout and the heavy top-level packages then in
# sys.modules.
PROBE = """
import contextlib, io, json, sys
from smsops.cli import app
out, heavy, runs = sys.argv[1], set(sys.argv[2].split(",")), json.loads(sys.argv[3])
report = []
for argv in runs:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            app(argv, prog_name="smsops")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    loaded = sorted({name.partition(".")[0] for name in sys.modules} & heavy)
    report.append({"argv": argv, "code": code, "stdout": printed.getvalue(), "heavy": loaded})
with open(out, "w") as fh:
    json.dump(report, fh)
"""


def probe(env: dict[str, str], tmp: Path, *runs: list[str]) -> list[dict]:
    """Run ``runs`` one after another in one fresh interpreter; what each left loaded."""
    out = tmp / "probe.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), ",".join(HEAVY), json.dumps(list(runs))],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and out.exists(), done.stderr
    return json.loads(out.read_text())


@pytest.fixture
def store(cli):
    """A store with users, tickets, one sent delivery and one scheduled for tomorrow: the
    history has rows, and nothing is due."""
    users = cli.tmp / "users.csv"
    users.write_text("user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(1, 4)))
    cli("users", "import", str(users))
    cli("tickets", "add", "20")
    cli("send", mobile(9), "-m", "today")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    cli("bulk", "create", "-m", "tomorrow", "--at", tomorrow, "--yes")
    return cli


def every_help() -> list[list[str]]:
    """``--help`` of the root and of every group and command, as typed."""
    from smsops.cli import app

    def walk(command, path: list[str]):  # type: ignore[no-untyped-def]
        yield [*path, "--help"]
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_issue12_no_help_imports_a_frame_library(store):
    helps = every_help()
    assert ["tickets", "balance", "--help"] in helps and len(helps) > 20
    for run in probe(store.env, store.tmp, *helps):
        assert run["code"] == 0, run
        assert run["heavy"] == [], f"smsops {' '.join(run['argv'])} imported {run['heavy']}"


LIGHT = [
    ["tickets", "balance"],
    ["tickets", "balance", "--json"],
    ["tickets", "add", "5", "--json"],
    ["account", "show"],
    ["account", "show", "--json"],
    ["account", "set", "--timezone", "Asia/Tokyo", "--json"],
    ["deliveries", "list"],
    ["deliveries", "list", "--json"],
    ["dispatch-due", "--json"],  # nothing due
]


@pytest.mark.parametrize("argv", LIGHT, ids=" ".join)
def test_issue12_light_command_imports_no_frame_library(store, argv):
    (run,) = probe(store.env, store.tmp, argv)
    assert run["code"] == 0, run
    assert run["heavy"] == [], f"smsops {' '.join(argv)} imported {run['heavy']}"


def test_issue12_light_commands_do_their_work_without_frames(store):
    """The same commands answer from the store they read, which is not empty."""
    balance, history = probe(
        store.env, store.tmp, ["tickets", "balance", "--json"], ["deliveries", "list", "--json"]
    )
    assert balance["heavy"] == history["heavy"] == []
    assert json.loads(balance["stdout"]) == {"balance": 19}  # 20 bought, 1 sent
    listed = json.loads(history["stdout"])["deliveries"]
    assert [(d["kind"], d["status"], d["sent"]) for d in listed] == [
        ("bulk", "scheduled", 0),
        ("individual", "sent", 1),
    ]


def test_issue12_import_smsops_loads_no_frame_library_and_keeps_its_names():
    code = (
        "import sys, smsops\n"
        f"heavy = sorted({{m.partition('.')[0] for m in sys.modules}} & {set(HEAVY)!r})\n"
        "from smsops import classify_phones, select_recipients, allocate_tickets\n"
        "from smsops.domain.phones import classify_phones as defined\n"
        "assert classify_phones is defined and smsops.SmsopsError.__name__ == 'SmsopsError'\n"
        "assert sorted(smsops.__all__) == sorted(n for n in dir(smsops) if n in smsops.__all__)\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
