"""End-to-end benchmark: users CSV → import → preview → create → dispatch → history,
against a floor measured in the same run (issue #12).

Run from the repository root: ``.venv/bin/python -m benchmarks.e2e --rows 1000000``.
Times each stage of the pipeline on a SQLite store (or ``--database-url``) with the
outbox gateway and prints seconds, rows/s and peak RSS per stage. Then the floor — a
minimal pipeline doing the same durable work for the same file and the same pairs:
pyarrow reads the CSV, each user written once, each (recipient, message) pair written
once and marked sent once, one JSON line per pair (COPY for the writes on PostgreSQL) —
and the ratio of smsops to it, with the dispatch stage apart, against the targets
(SQLite 2.0×, PostgreSQL 3.0×; peak RSS 1 GiB). ``--rows 100000,1000000,3000000`` runs
each size in its own process (peak RSS is per process) and prints one line per size.
Exits 1 if the pairs the delivery reports sent differ from the lines the outbox gained.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):  # run as ``python benchmarks/e2e.py`` without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smsops.services import account, deliveries, dispatch, people
from smsops.services.context import Context
from smsops.settings import Settings

T = TypeVar("T")

TARGET_RATIO = {"sqlite": 2.0, "postgresql": 3.0}  # smsops / floor, import..dispatch
TARGET_MIB = 1024.0
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


# --- the floor: a minimal pipeline doing the same durable work (issue #12) ------------


WRITE_SAMPLE = 10_000  # users of the small delivery whose item writes are counted
TARGET_WRITES = 2.0  # item rows written per pair by dispatch, after creation (#12)
_COUNT_WRITES = {
    "sqlite": [
        "CREATE TABLE bench_item_writes (delivery_id INTEGER)",
        "CREATE TRIGGER bench_count_item_writes AFTER UPDATE ON delivery_items BEGIN "
        "INSERT INTO bench_item_writes VALUES (NEW.delivery_id); END",
    ],
    "postgresql": [
        "CREATE TABLE bench_item_writes (delivery_id INTEGER)",
        "CREATE FUNCTION bench_count_item_write() RETURNS trigger AS $$ BEGIN "
        "INSERT INTO bench_item_writes VALUES (NEW.delivery_id); RETURN NEW; END "
        "$$ LANGUAGE plpgsql",
        "CREATE TRIGGER bench_count_item_writes AFTER UPDATE ON delivery_items "
        "FOR EACH ROW EXECUTE FUNCTION bench_count_item_write()",
    ],
}


def item_writes_per_pair(ctx: Context, users: int) -> tuple[float, int]:
    """Item rows written (UPDATEs, counted by a trigger on delivery_items) per pair while
    a bulk delivery of the first ``users`` users is allocated and dispatched: a second,
    small delivery after the timed one, which the trigger would have slowed."""
    dialect = ctx.engine.dialect.name
    with ctx.engine.begin() as conn:
        for sql in _COUNT_WRITES[dialect]:
            conn.exec_driver_sql(sql)
    try:
        account.add_tickets(ctx, len(MESSAGES) * users, note="benchmarks.e2e writes")
        preview = deliveries.preview_bulk(ctx, MESSAGES, query=f"user_id < 'u{users:07d}'")
        created = deliveries.create_bulk(ctx, preview)
        dispatch.dispatch(ctx, created.delivery_id)
        with ctx.engine.connect() as conn:
            written = conn.exec_driver_sql(
                "SELECT count(*) FROM bench_item_writes WHERE delivery_id = "
                f"{int(created.delivery_id)}"
            ).scalar_one()
    finally:
        with ctx.engine.begin() as conn:
            conn.exec_driver_sql(
                "DROP TRIGGER bench_count_item_writes"
                + (" ON delivery_items" if dialect == "postgresql" else "")
            )
            conn.exec_driver_sql("DROP TABLE bench_item_writes")
    return written / created.tickets_needed, created.tickets_needed


def _floor_sql(dialect: str, sql: str) -> str:
    return sql if dialect == "sqlite" else sql.replace("?", "%s")


class Floor:
    """The least any pipeline must do for the same file and the same pairs: read the CSV
    with pyarrow, write each user once (the whole row: smsops keeps the other columns too),
    write each (recipient, message) pair once, then,
    chunk by chunk, append one JSON line per pair (written and fsynced, as the outbox does)
    and mark each pair sent once. SQLite: executemany of tuples (WAL, synchronous=NORMAL,
    as smsops' store); PostgreSQL: COPY for the writes. Its own tables, keyed as a
    minimal design would key them (users by id, pairs by delivery, seq, message)."""

    def __init__(self, database_url: str, tmp: Path) -> None:
        self.pg = database_url.startswith("postgresql")
        self.outbox = tmp / "floor-outbox.jsonl"
        if self.pg:
            import psycopg

            url = database_url.replace("postgresql+psycopg://", "postgresql://")
            self.conn = psycopg.connect(url)
        else:
            import sqlite3

            self.conn = sqlite3.connect(tmp / "floor.db", isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        self._run("DROP TABLE IF EXISTS floor_items")
        self._run("DROP TABLE IF EXISTS floor_users")
        serial = "bigserial" if self.pg else "INTEGER"
        self._run(
            f"CREATE TABLE floor_users (pos {serial} PRIMARY KEY, user_id text NOT NULL "
            "UNIQUE, phone text, other text)"
        )
        self._run(
            "CREATE TABLE floor_items (delivery_id integer, seq integer, message_no integer, "
            "phone text NOT NULL, user_id text, status text NOT NULL, "
            "PRIMARY KEY (delivery_id, seq, message_no))"
        )
        if self.pg:
            self.conn.commit()

    def _run(self, sql: str) -> None:
        self.conn.execute(sql)

    def _copy(self, table: str, columns: str, rows: Iterable[tuple]) -> None:
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)

    def import_users(self, csv_path: Path) -> int:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pv

        table = pv.read_csv(csv_path, convert_options=pv.ConvertOptions(strings_can_be_null=True))
        table = table.cast(pa.schema([(name, pa.string()) for name in table.column_names]))
        # a user is the whole row: what smsops keeps of the other columns (one JSON object),
        # kept here as the row's other cells joined by a tab, the least a store can do
        others = [c for c in table.column_names if c not in ("user_id", "phone")]
        other = pc.binary_join_element_wise(
            *[pc.fill_null(table[c], "") for c in others], "\t"
        ).to_pylist()
        rows = zip(table["user_id"].to_pylist(), table["phone"].to_pylist(), other, strict=True)
        if self.pg:
            self._copy("floor_users", "user_id, phone, other", rows)
            self.conn.commit()
        else:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT INTO floor_users (user_id, phone, other) VALUES (?, ?, ?)", rows
            )
            self.conn.execute("COMMIT")
        return table.num_rows

    def create(self, phones: list[str], user_ids: list[str], messages: int) -> int:
        """Write each (recipient, message) pair once, as pending."""
        rows = (
            (1, seq, m, phone, uid, "pending")
            for seq, (phone, uid) in enumerate(zip(phones, user_ids, strict=True), 1)
            for m in range(1, messages + 1)
        )
        columns = "delivery_id, seq, message_no, phone, user_id, status"
        if self.pg:
            self._copy("floor_items", columns, rows)
            self.conn.commit()
        else:
            self.conn.execute("BEGIN")
            self.conn.executemany(f"INSERT INTO floor_items ({columns}) VALUES (?,?,?,?,?,?)", rows)
            self.conn.execute("COMMIT")
        return len(phones) * messages

    def dispatch(self, phones: list[str], texts: list[str], chunk: int) -> int:
        """Per chunk: the JSON lines appended and fsynced, then each pair marked sent once."""
        import numpy as np
        import pandas as pd

        fd = os.open(self.outbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        update = _floor_sql(
            "postgresql" if self.pg else "sqlite",
            "UPDATE floor_items SET status = 'sent' WHERE delivery_id = 1 AND seq = ? "
            "AND message_no = ?",
        )
        k, numbers = len(texts), np.asarray(phones, dtype=object)
        total = len(phones) * k
        for start in range(0, total, chunk):
            at = np.arange(start, min(start + chunk, total))
            seq, message_no = at // k + 1, at % k + 1
            lines = pd.DataFrame(
                {
                    "delivery_id": 1,
                    "phone": numbers[seq - 1],
                    "message_no": message_no,
                    "text": np.asarray(texts, dtype=object)[message_no - 1],
                    "idempotency_key": [
                        f"floor-1-{s}-{m}"
                        for s, m in zip(seq.tolist(), message_no.tolist(), strict=True)
                    ],
                    "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                }
            ).to_json(orient="records", lines=True, force_ascii=False)
            os.write(fd, (lines if lines.endswith("\n") else lines + "\n").encode())
            os.fsync(fd)
            part = list(zip(seq.tolist(), message_no.tolist(), strict=True))
            if self.pg:
                with self.conn.cursor() as cur:
                    cur.executemany(update, part)
                self.conn.commit()
            else:
                self.conn.execute("BEGIN")
                self.conn.executemany(update, part)
                self.conn.execute("COMMIT")
        os.close(fd)
        return total

    def close(self) -> None:
        if self.pg:
            self.conn.execute("DROP TABLE IF EXISTS floor_items")
            self.conn.execute("DROP TABLE IF EXISTS floor_users")
            self.conn.commit()
        self.conn.close()


def sweep(sizes: list[int], argv: list[str]) -> int:
    """Run each size in its own process (peak RSS is per process), one at a time, and print
    a line per size: smsops against the floor, and peak RSS."""
    rest, skip = [], False
    for arg in argv:  # every option but --rows is passed on
        if skip or arg == "--rows":
            skip = not skip and arg == "--rows"
            continue
        if not arg.startswith("--rows="):
            rest.append(arg)
    results = []
    for n in sizes:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, "-m", "benchmarks.e2e", "--rows", str(n), "--summary", out.name]
            code = subprocess.call([*cmd, *rest])
            results.append((n, code, json.loads(Path(out.name).read_text() or "{}")))
    print(
        f"\n{'rows':>10} {'smsops/floor':>13} {'import..create':>15} {'dispatch':>9} "
        f"{'peak MiB':>9} {'to create':>10} {'history':>8}"
    )
    for n, code, r in results:
        if not r:
            print(f"{n:>10,} failed (exit {code})")
            continue
        print(
            f"{n:>10,} {r['ratio']:>12.2f}× {r['ratio_before_dispatch']:>14.2f}× "
            f"{r['ratio_dispatch']:>8.2f}× {r['peak_mib']:>9,.0f} {r['peak_create_mib']:>10,.0f} "
            f"{r['peak_history_mib']:>8,.0f}"
        )
    return max(code for _, code, _ in results)


def main() -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rows",
        default="1000000",
        help="users in the CSV; several, comma-separated (100000,1000000,3000000), run one "
        "process each",
    )
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
    parser.add_argument("--no-floor", action="store_true", help="skip the floor")
    parser.add_argument("--summary", type=Path, help=argparse.SUPPRESS)  # for the sweep
    args = parser.parse_args()
    sizes = [int(n.replace("_", "")) for n in args.rows.split(",") if n.strip()]
    if len(sizes) > 1:
        return sweep(sizes, sys.argv[1:])
    rows = sizes[0]

    tmp = Path(tempfile.mkdtemp(prefix="smsops-e2e-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'smsops.db'}"
    dialect = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    outbox: Path = args.outbox or tmp / "outbox.jsonl"
    csv_path = tmp / "users.csv"
    print(f"rows {rows:,}, chunk size {args.chunk_size:,}, temp dir {tmp}")
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
            rows,
            "users",
            # in a child process: its memory is not smsops' peak RSS
            lambda: subprocess.run(
                [sys.executable, "-m", "smsops.synthetic", str(csv_path), str(rows), "--seed", "0"],
                check=True,
                stdout=subprocess.DEVNULL,
            ),
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
        account.add_tickets(ctx, 2 * rows, note="benchmarks.e2e")  # untimed
        preview = timed(
            stages,
            "preview",
            rows,
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

        def history() -> tuple[list[deliveries.DeliverySummary], int, int]:
            listed = deliveries.list_deliveries(ctx)
            # the detail read batch by batch, as `deliveries show` and notebooks page it:
            # memory bounded by a batch, not by the history (#12)
            d = created.delivery_id
            every = sum(map(len, deliveries.iter_delivery_items(ctx, d)))
            failed = sum(map(len, deliveries.iter_delivery_items(ctx, d, failed_only=True)))
            return listed, every, failed

        listed, item_rows, failed_rows = timed(
            stages, "history", pairs, "pairs", history, counted=False
        )
        per_pair, sampled = item_writes_per_pair(ctx, min(WRITE_SAMPLE, rows))
        rss = {s.name: s.rss_mib for s in stages}  # peak so far, after each stage
        peak = rss["dispatch"]  # import..dispatch: `users import` then `bulk create --yes`
        # the same pairs for the floor; the selection is smsops' work, not durable work
        recipients = preview.selection.recipients
        phones = recipients["phone"].to_numpy(dtype=object).tolist()
        user_ids = recipients["user_id"].to_numpy(dtype=object).tolist()
    finally:
        ctx.close()

    floor: list[Stage] = []
    floor_lines = 0
    if not args.no_floor:
        base = Floor(database_url, tmp)
        try:
            timed(floor, "f:import", lambda n: n, "users", lambda: base.import_users(csv_path))
            timed(
                floor,
                "f:create",
                lambda n: n,
                "pairs",
                lambda: base.create(phones, user_ids, len(MESSAGES)),
            )
            timed(
                floor,
                "f:dispatch",
                lambda n: n,
                "pairs",
                lambda: base.dispatch(phones, MESSAGES, args.chunk_size),
            )
        finally:
            base.close()
        floor_lines = count_lines(base.outbox)

    def seconds(which: list[Stage], *names: str) -> float:
        return sum(s.seconds for s in which if s.name.split(":")[-1] in names)

    mine = seconds(stages, "import", "preview", "create", "dispatch")
    mine_before = seconds(stages, "import", "preview", "create")
    mine_dispatch = seconds(stages, "dispatch")
    total_cpu = sum(s.cpu for s in stages if s.counted)
    consistent = result.sent == outbox_lines and (args.no_floor or floor_lines == pairs)

    print()
    print(HEADER)
    print("\n".join(s.line() for s in stages + floor))
    print()
    summary: dict[str, float] = {
        "rows": rows,
        "peak_mib": peak,
        "peak_create_mib": rss["create"],
        "peak_history_mib": rss["history"],
        "seconds": mine,
        "item_writes_per_pair": per_pair,
    }
    if floor:
        ratio = mine / seconds(floor, "import", "create", "dispatch")
        before = mine_before / seconds(floor, "import", "create")
        in_dispatch = mine_dispatch / seconds(floor, "dispatch")
        target = TARGET_RATIO[dialect]
        summary |= {
            "ratio": ratio,
            "ratio_before_dispatch": before,
            "ratio_dispatch": in_dispatch,
        }
        print(
            f"ratio  : smsops / floor {ratio:.2f}× for import..dispatch vs target "
            f"{target:.1f}× on {dialect} ({'OK' if ratio <= target else 'OVER'}); "
            f"import+preview+create {before:.2f}×, dispatch {in_dispatch:.2f}×"
        )
    print(
        f"writes : {per_pair:.2f} item rows written per pair by allocation and dispatch "
        f"(counted by a trigger over {sampled:,} pairs) vs target ≤ {TARGET_WRITES:g} "
        f"({'OK' if per_pair <= TARGET_WRITES else 'OVER'})"
    )
    print(
        f"cpu    : {total_cpu:.1f} CPU s in import..dispatch, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"memory : peak RSS {peak:,.0f} MiB for import..dispatch vs target {TARGET_MIB:,.0f} "
        f"MiB ({'OK' if peak <= TARGET_MIB else 'OVER'}); {rss['create']:,.0f} MiB up to "
        f"create, {rss['history']:,.0f} MiB after history"
    )
    print(
        f"sanity : users imported {imported.rows:,} (table {imported.users_total:,}), "
        f"recipients {len(phones):,}, pairs {pairs:,}, delivery "
        f"{result.delivery_id} {result.status}: sent {result.sent:,}, errors "
        f"{result.errors:,}, tickets used {result.tickets_used:,}"
    )
    print(
        f"         outbox lines {outbox_lines:,}, history items {item_rows:,} "
        f"(failed {failed_rows:,}), deliveries listed {len(listed):,}"
        + ("" if args.no_floor else f"; floor outbox lines {floor_lines:,}")
    )
    if not consistent:
        print(
            f"MISMATCH: {result.sent:,} pairs sent but {outbox_lines:,} outbox lines"
            + ("" if args.no_floor else f" (floor: {floor_lines:,} lines for {pairs:,} pairs)")
        )
    if args.summary:
        args.summary.write_text(json.dumps(summary))

    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())
