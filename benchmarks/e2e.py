"""End-to-end benchmark: users CSV → import → preview → create → dispatch → history.

Run from the repository root: ``.venv/bin/python -m benchmarks.e2e --rows 1000000``.
Times each stage of the pipeline on a SQLite store (or ``--database-url``) with the
outbox gateway, prints seconds, rows/s and peak RSS per stage, the total of stages 2-6
against the 60 s target and the peak memory against the 2 GB target (DESIGN.md, Quality
bars). Exits 1 if the pairs the delivery reports sent differ from the lines the outbox
gained.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):  # run as ``python benchmarks/e2e.py`` without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smsops.services import account, deliveries, dispatch, people
from smsops.services.context import Context
from smsops.settings import Settings
from smsops.synthetic import write_users_csv

T = TypeVar("T")

TARGET_SECONDS = 60.0
TARGET_MIB = 2 * 1024.0
MESSAGES = [
    "【春のセール】本日限定、全品10%オフ。詳しくはアプリでご確認ください。",
    "配信停止をご希望の方は「停止」とご返信ください。",
]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Stage:
    name: str
    seconds: float
    cpu: float  # CPU seconds of this process (all threads): far below ``seconds`` = waiting
    rows: int
    unit: str  # what ``rows`` counts: users or pairs
    rss_mib: float  # peak RSS after the stage
    counted: bool = True  # part of the stages 2-6 total

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        return (
            f"{self.name:<10} {self.seconds:9.3f} {self.cpu:8.2f} {self.rows:>12,} {self.unit:<6}"
            f"{self.rate:>14,.0f} {self.rss_mib:>11,.0f}"
        )


HEADER = (
    f"{'stage':<10} {'seconds':>9} {'cpu s':>8} {'rows':>12} {'':<6}{'rows/s':>14} {'peak MiB':>11}"
)


def timed(
    stages: list[Stage],
    name: str,
    rows: Callable[[T], int] | int,
    unit: str,
    fn: Callable[[], T],
    counted: bool = True,
) -> T:
    """Run ``fn``, record it as a stage and print its line at once (long runs show life)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = rows(out) if callable(rows) else rows
    stage = Stage(name, seconds, cpu, n, unit, peak_rss_mib(), counted)
    stages.append(stage)
    print(stage.line(), flush=True)
    return out


def count_lines(path: Path) -> int:
    """Newlines in ``path`` (0 when it does not exist), read in 16 MiB blocks."""
    if not path.exists():
        return 0
    lines = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            lines += block.count(b"\n")
    return lines


def dispatch_with(ctx: Context, delivery_id: int, workers: int) -> dispatch.DispatchResult:
    """Dispatch with this process plus ``workers - 1`` joining `smsops dispatch` processes."""
    env = {
        **os.environ,
        "SMSOPS_DATABASE_URL": ctx.settings.database_url,
        "SMSOPS_OUTBOX": str(ctx.settings.outbox),
        "SMSOPS_CHUNK_SIZE": str(ctx.settings.chunk_size),
    }
    helpers = [
        subprocess.Popen(
            [sys.executable, "-m", "smsops.cli", "dispatch", str(delivery_id), "--join", "--json"],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(workers - 1)
    ]
    result = dispatch.dispatch(ctx, delivery_id, join=True)
    for proc in helpers:
        proc.wait()
    return result


def main() -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="users in the CSV")
    parser.add_argument("--database-url", help="default: a SQLite file in a fresh temp dir")
    parser.add_argument("--outbox", type=Path, help="default: a file in the temp dir")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=Settings.model_fields["chunk_size"].default,
        help="pairs per gateway call and per transaction (default: %(default)s, as Settings)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="dispatchers on the delivery (extra ones are `smsops dispatch ID --join` processes)",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="smsops-e2e-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'smsops.db'}"
    outbox: Path = args.outbox or tmp / "outbox.jsonl"
    csv_path = tmp / "users.csv"
    print(f"rows {args.rows:,}, chunk size {args.chunk_size:,}, temp dir {tmp}")
    print(f"database {database_url}\noutbox   {outbox}\n")

    ctx = Context.open(
        Settings(
            database_url=database_url,
            gateway="outbox",
            outbox=outbox,
            chunk_size=args.chunk_size,
        )
    )
    stages: list[Stage] = []
    try:
        print(HEADER)
        timed(
            stages,
            "generate",
            args.rows,
            "users",
            lambda: write_users_csv(csv_path, args.rows, seed=0),
            counted=False,
        )
        ctx.engine  # open (create, migrate) the store outside the timed stages  # noqa: B018
        imported = timed(
            stages,
            "import",
            lambda r: r.rows,
            "users",
            lambda: people.import_users(ctx, [csv_path]),
        )
        account.add_tickets(ctx, 2 * args.rows, note="benchmarks.e2e")  # untimed
        preview = timed(
            stages,
            "preview",
            args.rows,
            "users",
            lambda: deliveries.preview_bulk(ctx, MESSAGES),
        )
        created = timed(
            stages,
            "create",
            lambda c: c.tickets_needed,
            "pairs",
            lambda: deliveries.create_bulk(ctx, preview),
        )
        pairs = created.tickets_needed
        lines_before = count_lines(outbox)
        result = timed(
            stages,
            "dispatch",
            pairs,
            "pairs",
            lambda: dispatch_with(ctx, created.delivery_id, args.workers),
        )
        outbox_lines = count_lines(outbox) - lines_before

        def history() -> tuple[list[dict[str, object]], int, int]:
            listed = deliveries.list_deliveries(ctx)
            every = deliveries.delivery_items(ctx, created.delivery_id)
            failed = deliveries.delivery_items(ctx, created.delivery_id, failed_only=True)
            return listed, len(every), len(failed)

        listed, item_rows, failed_rows = timed(stages, "history", pairs, "pairs", history)
    finally:
        ctx.close()

    total = sum(s.seconds for s in stages if s.counted)
    total_cpu = sum(s.cpu for s in stages if s.counted)
    peak = max(s.rss_mib for s in stages)
    ok_time, ok_mem = total < TARGET_SECONDS, peak < TARGET_MIB
    consistent = result.sent == outbox_lines

    print()
    print(HEADER)
    print("\n".join(s.line() for s in stages))
    print(
        f"{'total 2-6':<10} {total:9.3f} {total_cpu:8.2f} {'':>12} {'':<6}"
        f"{args.rows / total:>14,.0f} {'users/s':>11}"
    )
    print()
    print(
        f"time   : {total:.1f} s for import..history vs target {TARGET_SECONDS:.0f} s "
        f"({'OK' if ok_time else 'OVER'}); {total_cpu:.1f} CPU s, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"memory : peak RSS {peak:,.0f} MiB vs target {TARGET_MIB:,.0f} MiB "
        f"({'OK' if ok_mem else 'OVER'})"
    )
    print(
        f"sanity : users imported {imported.rows:,} (table {imported.users_total:,}), "
        f"recipients {preview.recipients:,}, pairs {pairs:,}, delivery "
        f"{result.delivery_id} {result.status}: sent {result.sent:,}, errors "
        f"{result.errors:,}, tickets used {result.tickets_used:,}"
    )
    print(
        f"         outbox lines {outbox_lines:,}, history items {item_rows:,} "
        f"(failed {failed_rows:,}), deliveries listed {len(listed):,}"
    )
    print(f"excluded: {preview.excluded}")
    if not consistent:
        print(f"MISMATCH: {result.sent:,} pairs sent but {outbox_lines:,} outbox lines")

    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())
