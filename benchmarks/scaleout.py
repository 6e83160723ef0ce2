"""Scale-out on PostgreSQL (#13): one delivery, 1–4 joined dispatchers, each with its own
capped bind.

In production the limit is the SMSC: each bind carries a fixed number of messages per
second, and a team adds senders to add binds. So each dispatcher here is its own process
(``smsops dispatch ID --join``) with ``SMSOPS_RATE_LIMIT`` (300 by default) and its own
outbox file (the ``outbox`` gateway keeps the cap as a real bind would). For N = 1, 2, 3,
4 it copies one database holding the users, creates one delivery of ``--pairs`` pairs
(queued: nothing sends it but the dispatchers), starts N dispatchers at once and measures
throughput from the first to the last outbox line across all of them. It prints, per N,
messages/s, the speed-up against the one capped dispatcher of the same run (target ≥
0.9·N) and each dispatcher's share; and the single dispatcher's rate as a fraction of its
cap (target ≥ 97 %). Every run must send every (recipient, message) pair exactly once
(counted over all outboxes) and end ``sent``: if not, it exits 1.

Run from the repository root: ``.venv/bin/python -m benchmarks.scaleout`` (options
``--pairs``, ``--rate``, ``--chunk-size``, ``--dispatchers 1,2,3,4``). The database is a
throwaway PostgreSQL server (``tests/pg.py``) on loopback, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pg import PostgresServer, create_database

from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.people import upsert_users
from smsops.settings import Settings

SMSOPS = str(Path(sys.executable).parent / "smsops")
TEXTS = [
    "冬のセール開始！全品20%オフ。ご来店お待ちしております。",
    "詳細は https://example.jp/s で",
]


def phone(i: int) -> str:
    return f"+8190{1000 + i // 10000:04d}{i % 10000:04d}"


def users_database(admin_url: str, recipients: int) -> str:
    """A database holding ``recipients`` users with distinct mobile numbers (the template
    every run copies)."""
    url = create_database(admin_url)
    ctx = Context.open(Settings(database_url=url))
    upsert_users(
        ctx,
        pd.DataFrame(
            {
                "user_id": [f"u{i:06d}" for i in range(recipients)],
                "phone": pd.Series([phone(i) for i in range(recipients)], dtype="string"),
            }
        ),
    )
    ctx.engine.dispose()
    return url


def one_run(
    admin_url: str, template: str, n: int, pairs: int, messages: int, args, work: Path
) -> dict:
    """N joined dispatchers on a fresh copy of the template: figures and checks."""
    url = create_database(admin_url, template=template)
    ctx = Context.open(Settings(database_url=url))
    accounts.add_tickets(ctx, pairs)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, TEXTS[:messages]))
    assert created.status == "queued", created
    delivery = created.delivery_id
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSOPS_")}
    env.update(
        SMSOPS_DATABASE_URL=url,
        SMSOPS_RATE_LIMIT=str(args.rate),
        SMSOPS_CHUNK_SIZE=str(args.chunk_size),
    )
    outboxes = [work / f"n{n}-dispatcher{k}.jsonl" for k in range(n)]
    procs = [
        subprocess.Popen(
            [SMSOPS, "dispatch", str(delivery), "--join", "--json"],
            env={**env, "SMSOPS_OUTBOX": str(outbox)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for outbox in outboxes
    ]
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"a dispatcher failed (exit {p.returncode}): {err.strip()[-500:]}")
    lines = [
        [json.loads(x) for x in o.read_text(encoding="utf-8").splitlines()] if o.exists() else []
        for o in outboxes
    ]
    keys = Counter(r["idempotency_key"] for got in lines for r in got)
    times = [[datetime.fromisoformat(r["accepted_at"]) for r in got] for got in lines]
    first = min(t for ts in times for t in ts)
    last = max(t for ts in times for t in ts)
    status = dl.delivery_summary(ctx, delivery).status
    ctx.engine.dispose()
    span = (last - first).total_seconds()
    return {
        "n": n,
        "rate": sum(len(got) for got in lines) / span,
        "span": span,
        "each": [len(got) for got in lines],
        "each_rate": [
            len(ts) / max((max(ts) - min(ts)).total_seconds(), 1e-9) if ts else 0.0 for ts in times
        ],
        "twice": sum(1 for c in keys.values() if c > 1),
        "distinct": len(keys),
        "status": status,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=40_000, help="pairs in the delivery")
    ap.add_argument("--messages", type=int, default=2, choices=(1, 2), help="per recipient")
    ap.add_argument("--rate", type=float, default=300.0, help="SMSOPS_RATE_LIMIT of each")
    ap.add_argument("--chunk-size", type=int, default=1_000, help="SMSOPS_CHUNK_SIZE")
    ap.add_argument("--dispatchers", default="1,2,3,4", help="the N to run, comma-separated")
    args = ap.parse_args()
    ns = [int(x) for x in args.dispatchers.split(",")]
    if ns[0] != 1:
        raise SystemExit("--dispatchers must start with 1 (the baseline)")
    recipients = args.pairs // args.messages
    pairs = recipients * args.messages
    print(
        f"one delivery of {pairs:,} pairs ({recipients:,} recipients × {args.messages}) on "
        f"PostgreSQL; each dispatcher capped at {args.rate:g}/s, chunks of {args.chunk_size:,}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    server = PostgresServer().start()
    failed = False
    try:
        template = users_database(server.url, recipients)
        runs = []
        with tempfile.TemporaryDirectory(prefix="smsops-scaleout-") as tmp:
            for n in ns:
                started = time.monotonic()
                run = one_run(server.url, template, n, pairs, args.messages, args, Path(tmp))
                runs.append(run)
                ok = run["twice"] == 0 and run["distinct"] == pairs and run["status"] == "sent"
                failed |= not ok
                print(
                    f"N={n}: {run['rate']:7.1f} msg/s over {run['span']:6.1f} s "
                    f"(wall {time.monotonic() - started:5.1f} s); per dispatcher "
                    + ", ".join(
                        f"{c:,} at {r:.0f}/s"
                        for c, r in zip(run["each"], run["each_rate"], strict=True)
                    )
                    + f"; {'each pair once' if ok else 'NOT EACH PAIR ONCE'} "
                    f"({run['distinct']:,} distinct, {run['twice']} twice, {run['status']})"
                )
        base = runs[0]["rate"]
        fraction = base / args.rate
        print(
            f"\none capped dispatcher: {fraction:.1%} of its cap "
            f"(target ≥ 97 %: {'met' if fraction >= 0.97 else 'NOT met'})"
        )
        for run in runs[1:]:
            speedup = run["rate"] / base
            target = 0.9 * run["n"]
            print(
                f"N={run['n']}: speed-up {speedup:.2f}× vs one capped dispatcher "
                f"(target ≥ {target:.1f}×: {'met' if speedup >= target else 'NOT met'}); "
                f"{run['rate'] / (run['n'] * args.rate):.1%} of N caps"
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        server.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
