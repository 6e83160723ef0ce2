"""How fast the light commands start (issue #12), as ratios to ``import typer, sqlalchemy``.

    .venv/bin/python -m benchmarks.start [--repeat 9] [--users 1000]

Each command runs as the real ``smsops`` console script in a fresh process, against a
throwaway store that holds users, a sent bulk delivery, a sent individual send and one
scheduled for tomorrow (so ``deliveries list`` counts real rows and ``dispatch-due`` finds
nothing due). The runs are interleaved round by round, so a burst of load on this shared
machine hits every command alike; each is reported as min and median seconds and as
ratios to the baseline measured in the same run. Target: ``--help`` and ``tickets
balance`` at most 1.2× the baseline.

A second reference, ``typer + sqlalchemy command``, is the least any typer command on
the store costs: a one-command typer app that sums the ledger. Running a command with
parameters makes typer (0.2x) import pydantic, which ``import typer`` alone does not.

Last, each command runs once under ``-X importtime``: the heavy libraries it loaded, with
their cumulative import time, so a regression shows which import came back.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_fast_start import HEAVY

TARGET = 1.2  # --help and tickets balance, times the baseline

COMMANDS = {
    "smsops --help": ["--help"],
    "smsops tickets balance": ["tickets", "balance"],
    "smsops account show": ["account", "show"],
    "smsops deliveries list": ["deliveries", "list"],
    "smsops dispatch-due (nothing due)": ["dispatch-due"],
}

_FLOOR = """
import sys, typer, sqlalchemy
url = sys.argv.pop()
app = typer.Typer(add_completion=False)
@app.command()
def balance(as_json: bool = typer.Option(False, "--json")) -> None:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        print(conn.execute(sqlalchemy.text("SELECT coalesce(sum(amount), 0) FROM ledger")).scalar())
@app.command()
def other() -> None: ...
app()
"""


def smsops_command() -> list[str]:
    """The installed console script, as a user runs it (or the module, if not installed)."""
    script = Path(sys.executable).with_name("smsops")
    return [str(script)] if script.exists() else [sys.executable, "-m", "smsops.cli"]


def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Run ``argv`` to its end: (wall seconds, CPU seconds of the process, user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def seed(smsops: list[str], env: dict[str, str], cwd: Path, users: int) -> None:
    """Users, tickets, a sent bulk delivery, a sent individual send, and one for tomorrow."""
    table = cwd / "users.csv"
    lines = [f"u{i},090-{1000 + i // 10000:04d}-{i % 10000:04d}" for i in range(1, users + 1)]
    table.write_text("user_id,phone\n" + "\n".join(lines) + "\n")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for args in (
        ["users", "import", str(table)],
        ["tickets", "add", str(4 * users)],
        ["bulk", "create", "-m", "today", "--yes"],
        ["send", "080-1234-5678", "-m", "one"],
        ["bulk", "create", "-m", "tomorrow", "--at", tomorrow, "--yes"],
    ):
        run([*smsops, *args], env, cwd)


def heavy_imports(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """The heavy top-level packages ``argv`` imported: {name: cumulative import ms}."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    found: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        if name in HEAVY and cumulative.strip().isdigit():
            found[name] = max(found.get(name, 0.0), int(cumulative) / 1000)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="runs of each command")
    parser.add_argument("--users", type=int, default=1000, help="users in the store")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="smsops-start-"))
    try:
        # A clean environment: no SMSOPS_* but the throwaway store; the working directory
        # is the temp dir, so no .env file is read.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMSOPS_")}
        env.update(
            SMSOPS_DATABASE_URL=f"sqlite:///{tmp / 'smsops.db'}",
            SMSOPS_OUTBOX=str(tmp / "outbox.jsonl"),
        )
        smsops = smsops_command()
        seed(smsops, env, tmp, args.users)

        runs = {
            "baseline: import typer, sqlalchemy": [
                sys.executable,
                "-c",
                "import typer, sqlalchemy",
            ],
            "typer + sqlalchemy command": [
                sys.executable,
                "-c",
                _FLOOR,
                "balance",
                env["SMSOPS_DATABASE_URL"],
            ],
            **{name: [*smsops, *argv] for name, argv in COMMANDS.items()},
        }
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for argv in runs.values():  # warm the file cache; not counted
            run(argv, env, tmp)
        for _ in range(args.repeat):
            for name, argv in runs.items():
                w, c = run(argv, env, tmp)
                wall[name].append(w)
                cpu[name].append(c)

        def ratios(name: str) -> tuple[float, float, float]:
            """(wall min, wall median, CPU median), each over the baseline's."""
            base = "baseline: import typer, sqlalchemy"
            return (
                min(wall[name]) / min(wall[base]),
                statistics.median(wall[name]) / statistics.median(wall[base]),
                statistics.median(cpu[name]) / statistics.median(cpu[base]),
            )

        print(
            f"{args.repeat} fresh runs each, interleaved; store: {args.users:,} users; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print(
            f"{'command':36} {'wall min':>9} {'median':>7} {'CPU median':>11}   "
            f"{'× wall min':>10} {'× wall median':>13} {'× CPU median':>12}"
        )
        for name in runs:
            low, mid, work = ratios(name)
            print(
                f"{name:36} {min(wall[name]):8.3f}s {statistics.median(wall[name]):6.3f}s "
                f"{statistics.median(cpu[name]):10.3f}s   {low:9.2f}× {mid:12.2f}× {work:11.2f}×"
            )
        for name in ("smsops --help", "smsops tickets balance"):
            low, _, work = ratios(name)
            verdict = "meets" if max(low, work) <= TARGET else "misses"
            print(f"target {name}: {low:.2f}× wall min, {work:.2f}× CPU; {verdict} ≤ {TARGET}×")
        low, _, work = ratios("typer + sqlalchemy command")
        print(f"the least a typer command on the store costs: {low:.2f}× wall min, {work:.2f}× CPU")

        print("heavy libraries imported (cumulative import ms, one -X importtime run):")
        # the console script is a Python file: `python -X importtime <script>` runs it
        python_args = smsops[1:] if smsops[0] == sys.executable else smsops
        for name, argv in COMMANDS.items():
            found = heavy_imports([*python_args, *argv], env, tmp)
            shown = ", ".join(f"{m} {ms:.0f} ms" for m, ms in sorted(found.items())) or "none"
            print(f"  {name:36} {shown}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
