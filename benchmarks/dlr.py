"""Benchmark delivery-report ingest (#12): can ``smsops receiver`` record reports as fast
as Kannel sends the messages they report on?

In one run:

1. the baseline: a real Kannel on loopback (bearerbox + smsbox + fakesmsc, as
   ``benchmarks.kannel`` starts it) takes ``--kannel-messages`` sendsms requests from
   ``benchmarks.kannel``'s bare async client (4 in flight), before and after step 3; the
   send rate is their mean;
2. a real delivery of ``--reports`` sent pairs (N/2 recipients × 2 messages, dispatched
   to the outbox) on a throwaway SQLite store (``--database-url`` for another, e.g. a
   PostgreSQL database of your own; ``--postgres`` starts a throwaway PostgreSQL);
3. the real ``smsops receiver`` (the CLI, its own process) on loopback takes one report
   per pair from ``--clients`` keep-alive connections at once, each request the query
   string Kannel makes of smsops' dlr-url (``token``, ``inst``, ``key``, then
   ``status=%d&at=%T&ref=%F&reason=%A`` with an SMPP receipt as ``%A``, URL-encoded as
   Kannel does); one in ten is ``undeliverable``.

It prints reports/s and its ratio to the Kannel send rate (target ≥ 2), then counts the
rows: every pair must hold exactly the report sent for it (0 lost, 0 wrong), and a
second pass of 1,000 of the same reports must change nothing (0 duplicates). Exits 1 if
a report was not answered 200, lost, wrong or changed by its repeat.

The reports go out through a small asyncio HTTP/1.1 client (raw streams, one request at
a time per connection, as Kannel's C client sends them), not httpx: httpx's async pool
slows down as requests in flight grow (on this machine, ~1,000 /health answers/s at 1 in
flight, ~330/s at 16), so it would measure itself.

Run from the repository root: ``.venv/bin/python -m benchmarks.dlr``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from integration.kannel import Kannel, free_port, missing

from benchmarks.kannel import bare
from smsops.gateways.kannel import DLR_QUERY
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import inbound
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.services.people import upsert_users
from smsops.settings import Settings
from smsops.store import read
from smsops.store.schema import items

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["冬のセール開始！全品20%オフ。", "詳細は https://example.jp/s で"]
AT = 1_796_083_200  # 2026-12-01 00:00 UTC, as %T (epoch seconds)


def phone(i: int) -> str:
    return f"+8190{1000 + i // 10000:04d}{i % 10000:04d}"


def pairs(n: int) -> list[tuple[int, int]]:
    """(seq, message_no) of the delivery's n pairs, in order."""
    return [(i // 2 + 1, i % 2 + 1) for i in range(n)]


def report_for(i: int) -> tuple[int, str]:
    """The report (Kannel type, SMPP receipt) pair i gets: one in ten undeliverable."""
    failed = i % 10 == 9
    receipt = (
        f"id:{i:010d} sub:001 dlvrd:{0 if failed else 1:03d} submit date:2612010900 "
        f"done date:2612010901 stat:{'UNDELIV' if failed else 'DELIVRD'} "
        f"err:{1 if failed else 0:03d} text:冬のセール"
    )
    return (2 if failed else 1), receipt


def dlr_target(
    dlr_url: str, installation: str, delivery_id: int, i: int, seq: int, no: int
) -> bytes:
    """The request target Kannel calls for pair i: smsops' dlr-url (as
    ``KannelGateway`` builds it) with Kannel's escapes filled in and URL-encoded."""
    status, receipt = report_for(i)
    template = f"{dlr_url}inst={installation}&key=smsops-{delivery_id}-{seq}-{no}&{DLR_QUERY}"
    filled = (
        template.replace("%d", str(status))
        .replace("%T", str(AT + i % 3600))
        .replace("%F", quote(f"{i:010d}", safe=""))
        .replace("%A", quote(receipt, safe=""))
    )
    return ("/" + filled.split("://", 1)[1].split("/", 1)[1]).encode()


async def fire(port: int, targets: list[bytes], clients: int) -> Counter[int]:
    """Send every target as ``GET`` from ``clients`` keep-alive connections at once;
    count the answers by status (a connection the receiver closes is opened again)."""
    answers: Counter[int] = Counter()
    todo = iter(targets)
    head = f" HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Kannel/1.4.5\r\n\r\n".encode()

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for target in todo:
                writer.write(b"GET " + target + head)
                header = await reader.readuntil(b"\r\n\r\n")
                lines = header.split(b"\r\n")
                fields = dict(line.lower().split(b":", 1) for line in lines[1:] if b":" in line)
                await reader.readexactly(int(fields.get(b"content-length", b"0")))
                answers[int(lines[0].split(b" ", 2)[1])] += 1
                if fields.get(b"connection", b"").strip() == b"close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


def snapshot(ctx: Context, delivery_id: int) -> pd.DataFrame:
    with read(ctx.engine) as conn:
        rows = conn.execute(
            select(
                items.c.seq,
                items.c.message_no,
                items.c.dlr_status,
                items.c.dlr_at,
                items.c.dlr_reason,
                items.c.gateway_ref,
            )
            .where(items.c.delivery_id == delivery_id)
            .order_by(items.c.seq, items.c.message_no)
        ).all()
    return pd.DataFrame(rows, columns=["seq", "message_no", "status", "at", "reason", "ref"])


def start_receiver(settings: Settings, port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "SMSOPS_DATABASE_URL": settings.database_url,
        "SMSOPS_RECEIVER_TOKEN": settings.receiver_token.get_secret_value(),  # type: ignore[union-attr]
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "smsops.cli", "receiver", "--port", str(port), "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("{"):
        proc.kill()
        raise SystemExit(f"smsops receiver did not start (exit {proc.wait()})")
    json.loads(line)
    return proc


def kannel_rate(kannel: Kannel, n: int, offset: int) -> float:
    start = time.perf_counter()
    accepted = asyncio.run(bare(kannel.sendsms_url, kannel.user, kannel.password, n, 4, offset))
    rate = n / (time.perf_counter() - start)
    if accepted != n:
        raise SystemExit(f"Kannel accepted {accepted:,} of {n:,} messages")
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=50_000, help="sent pairs, one report each")
    parser.add_argument("--clients", type=int, default=16, help="connections at once")
    parser.add_argument("--kannel-messages", type=int, default=10_000)
    parser.add_argument("--database-url", help="default: SQLite in a temp dir")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL")
    args = parser.parse_args()
    if missing():
        print(f"Kannel is not installed ({', '.join(missing())})", file=sys.stderr)
        return 1
    n = args.reports - args.reports % 2
    server = None
    with tempfile.TemporaryDirectory(prefix="smsops-dlr-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'smsops.db'}"
        if args.postgres:
            from pg import PostgresServer, create_database

            server = PostgresServer().start()
            url = create_database(server.url)
        try:
            return run(args, n, url, Path(tmp))
        finally:
            if server is not None:
                server.close()


def run(args: argparse.Namespace, n: int, url: str, tmp: Path) -> int:
    token = secrets.token_urlsafe(32)
    settings = Settings(
        database_url=url,
        outbox=tmp / "outbox.jsonl",
        receiver_token=token,  # type: ignore[arg-type]
    )
    ctx = Context.open(settings)
    store = url.split(":", 1)[0].split("+")[0]
    print(
        f"{n:,} delivery reports from {args.clients} connections to smsops receiver on "
        f"{store}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    upsert_users(
        ctx,
        pd.DataFrame(
            {
                "user_id": [f"u{i}" for i in range(n // 2)],
                "phone": [phone(i) for i in range(n // 2)],
            }
        ),
    )
    accounts.add_tickets(ctx, n)
    delivery_id = dl.create_bulk(ctx, dl.preview_bulk(ctx, TEXTS)).delivery_id
    sent = dispatch(ctx, delivery_id).sent
    if sent != n:
        print(f"the delivery sent {sent:,} of {n:,} pairs", file=sys.stderr)
        return 1
    installation = inbound.installation_id(ctx)
    port = free_port()
    dlr_url = f"http://127.0.0.1:{port}/dlr?token={token}&"
    targets = [
        dlr_target(dlr_url, installation, delivery_id, i, seq, no)
        for i, (seq, no) in enumerate(pairs(n))
    ]

    kannel_rates: list[float] = []
    with Kannel(tmp / "kannel", mo_url="http://127.0.0.1:9/mo", log_level=2) as kannel:
        m = args.kannel_messages - args.kannel_messages % 2
        kannel_rates.append(kannel_rate(kannel, m, 0))
        kannel.wait_received(m, timeout=300)  # drained to the fake SMSC before the reports

        receiver = start_receiver(settings, port)
        try:
            start = time.perf_counter()
            answers = asyncio.run(fire(port, targets, args.clients))
            seconds = time.perf_counter() - start
            after = snapshot(ctx, delivery_id)
            # Repeats (Kannel retrying, an SMSC reporting twice): nothing may change.
            step = max(1, n // 1000)
            again = asyncio.run(fire(port, targets[::step], args.clients))
            repeated = snapshot(ctx, delivery_id)
        finally:
            receiver.terminate()
            receiver.wait(timeout=30)

        kannel_rates.append(kannel_rate(kannel, m, m))
        kannel.wait_received(2 * m, timeout=300)

    dlr_rate = n / seconds
    send_rate = statistics.mean(kannel_rates)
    expected = pd.Series(
        ["undeliverable" if i % 10 == 9 else "delivered" for i in range(n)], name="status"
    )
    lost = int(after["status"].isna().sum())
    wrong = int((after["status"].fillna("") != expected).sum()) - lost
    rows = len(after)
    changed = int((repeated.astype(str) != after.astype(str)).any(axis=1).sum())
    with read(ctx.engine) as conn:
        all_rows = conn.execute(
            select(func.count()).where(items.c.delivery_id == delivery_id)
        ).scalar_one()
    ctx.close()
    print(
        f"Kannel send rate: {send_rate:,.0f} msg/s "
        f"(before {kannel_rates[0]:,.0f}, after {kannel_rates[1]:,.0f}; bare client, 4 in flight)"
    )
    print(
        f"DLR ingest: {dlr_rate:,.0f} reports/s ({n:,} in {seconds:.2f} s; answers "
        f"{dict(sorted(answers.items()))}); ratio to the Kannel send rate "
        f"{dlr_rate / send_rate:.2f} (target ≥ 2: {'met' if dlr_rate >= 2 * send_rate else 'NOT'})"
    )
    print(
        f"rows: {rows:,} pairs (table {all_rows:,}), {lost} lost, {wrong} wrong; "
        f"{sum(again.values()):,} repeats answered {dict(sorted(again.items()))}, "
        f"{changed} rows changed by them (duplicates)"
    )
    ok = (
        answers == Counter({200: n})
        and again == Counter({200: len(targets[::step])})
        and lost == 0
        and wrong == 0
        and changed == 0
        and rows == all_rows == n
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
