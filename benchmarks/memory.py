"""Peak memory of import, create and history for growing user tables (issue #12).

Run from the repository root: ``.venv/bin/python -m benchmarks.memory`` (default
``--rows 100000,1000000,3000000``). For each size it writes a synthetic users CSV (seed 0,
in a child process), then runs each stage in a fresh process against one SQLite store
and reads that process's peak RSS (``ru_maxrss``):

- ``import``: ``people.import_users`` of the CSV (read, check, validate, write);
- ``create``: ``preview_bulk`` of 2 messages and ``create_bulk`` (after an untimed
  ``add_tickets``): selection and the delivery's items written;
- ``history``: ``list_deliveries`` and every item of the delivery, then its failed ones,
  read batch by batch (``iter_delivery_items``).

Each peak is shown as a ratio to the peak RSS of ``python -c "import pandas, pyarrow"``
measured in the same run (the floor any frame-handling process pays), with the MiB above
that floor per 1,000 users: a figure that stays flat or falls as the rows grow is memory
growing sub-linearly with the rows. Targets: every stage at 1M users ≤ 1 GiB, and the
3M figure below 3× the 1M one above the floor. Exits 1 when a stage is over 1 GiB at 1M
or fewer rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as ``python benchmarks/memory.py`` without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGES = ("import", "create", "history")
TARGET_MIB = 1024.0
MESSAGES = [
    "【春のセール】本日限定、全品10%オフ。詳しくはアプリでご確認ください。",
    "配信停止をご希望の方は「停止」とご返信ください。",
]
BASELINE = (
    "import pandas, pyarrow, resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def stage(name: str, database_url: str, csv_path: Path, rows: int) -> dict[str, object]:
    """Run one stage in this process; what it did, and this process's peak RSS."""
    from smsops.services import account, deliveries, people
    from smsops.services.context import Context
    from smsops.settings import Settings

    ctx = Context.open(Settings(database_url=database_url, gateway="outbox"))
    ctx.engine  # noqa: B018  (open and migrate the store before measuring anything)
    done: dict[str, object] = {}
    if name == "import":
        done["rows"] = people.import_users(ctx, [csv_path]).rows
    elif name == "create":
        account.add_tickets(ctx, 2 * rows, note="benchmarks.memory")
        preview = deliveries.preview_bulk(ctx, MESSAGES)
        done["pairs"] = deliveries.create_bulk(ctx, preview).tickets_needed
    else:
        (last, *_) = deliveries.list_deliveries(ctx, limit=1)
        every = sum(len(b) for b in deliveries.iter_delivery_items(ctx, last.id))
        failed = sum(len(b) for b in deliveries.iter_delivery_items(ctx, last.id, failed_only=True))
        done |= {"items": every, "failed": failed}
    return {**done, "peak_kib": peak_kib()}


def child(*args: str) -> str:
    return subprocess.run(
        [sys.executable, *args], check=True, capture_output=True, text=True
    ).stdout


def measure(rows: int, keep: bool) -> dict[str, object]:
    """Every stage for ``rows`` users, each in its own process, and the same-run floor."""
    tmp = Path(tempfile.mkdtemp(prefix="smsops-memory-"))
    csv_path, database_url = tmp / "users.csv", f"sqlite:///{tmp / 'smsops.db'}"
    try:
        child("-m", "smsops.synthetic", str(csv_path), str(rows), "--seed", "0")
        base = min(int(child("-c", BASELINE)) for _ in range(3))
        out: dict[str, object] = {"rows": rows, "baseline_kib": base}
        for name in STAGES:
            line = child(
                "-m", "benchmarks.memory", "--stage", name, database_url, str(csv_path), str(rows)
            )
            out[name] = json.loads(line.strip().splitlines()[-1])
        return out
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000,3000000")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs")
    parser.add_argument("--stage", nargs=4, help=argparse.SUPPRESS)  # a child's own stage
    args = parser.parse_args()
    if args.stage:
        name, url, csv_path, rows = args.stage
        print(json.dumps(stage(name, url, Path(csv_path), int(rows))))
        return 0
    sizes = [int(n.replace("_", "")) for n in args.rows.split(",") if n.strip()]
    print(
        f"{'users':>10} {'floor MiB':>9} "
        + " ".join(f"{s + ' ×':>10} {'MiB/1k':>7}" for s in STAGES)
    )
    over = False
    for rows in sizes:
        r = measure(rows, args.keep)
        base = int(r["baseline_kib"])  # type: ignore[call-overload]
        cells = []
        for name in STAGES:
            peak = int(r[name]["peak_kib"])  # type: ignore[index]
            per_k = (peak - base) / 1024 / (rows / 1000)
            cells.append(f"{peak / base:>9.2f}× {per_k:>7.3f}")
            over |= rows <= 1_000_000 and peak / 1024 > TARGET_MIB
        print(f"{rows:>10,} {base / 1024:>9.0f} " + " ".join(cells), flush=True)
        print("    " + json.dumps(r), flush=True)
    print(
        "× = the stage's peak RSS over the floor's (import pandas, pyarrow), same run; "
        "MiB/1k = MiB above the floor per 1,000 users (flat or falling: sub-linear)"
    )
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
