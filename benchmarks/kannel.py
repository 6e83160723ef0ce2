"""Benchmark the kannel gateway against a real Kannel on loopback.

Starts bearerbox + smsbox + fakesmsc (Debian ``kannel``, ``kannel-extras``), then, in
the same run and alternating, sends the same number of messages

- through smsops: a bulk delivery (N/2 recipients × 2 messages) created and sent by
  ``dispatch`` with ``SMSOPS_GATEWAY=kannel`` (claim, ticket allocation, chunked sends,
  recording every result — the whole path), and
- with a bare client: asyncio + one httpx.AsyncClient posting the identical sendsms
  requests at the same concurrency, and nothing else;

and prints messages/s of each and their ratio (target ≥ 0.8), per run and as median and
best (Kannel's own speed varies from run to run, more on a busy machine). Kannel drains
to the fake SMSC between runs. No delivery reports are asked for in either (they would load Kannel
the same way in both). Then it shows the rate cap: with ``SMSOPS_RATE_LIMIT`` (200 by
default) it sends ``--rate-messages`` messages and prints the most that went out in any
1-second window. ``--sweep`` also prints the bare client at several concurrencies.

Run from the repository root: ``.venv/bin/python -m benchmarks.kannel``. Exits 1 if a
message was not accepted or the cap was exceeded.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from integration.kannel import Kannel, RecordingTransport, max_in_any_second, missing

from smsops.gateways.kannel import KannelGateway
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.services.people import upsert_users
from smsops.settings import Settings

TEXTS = [
    "冬のセール開始！全品20%オフ。ご来店お待ちしております。",
    "詳細は https://example.jp/s で",
]


def phone(i: int) -> str:
    return f"+8190{1000 + i // 10000:04d}{i % 10000:04d}"


async def bare(url: str, user: str, password: str, n: int, concurrency: int, offset: int) -> int:
    """Post n sendsms requests as fast as Kannel answers; return how many were accepted."""
    headers = {
        "Content-Type": "text/plain; charset=UTF-8",
        "X-Kannel-Username": user,
        "X-Kannel-Password": password,
        "X-Kannel-Coding": "2",
    }
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    accepted = 0
    todo = iter(range(n))
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal accepted
            for i in todo:
                r = await client.post(
                    url,
                    content=TEXTS[i % 2].encode(),
                    headers={"X-Kannel-To": phone(offset + i // 2)},
                )
                accepted += r.status_code == 202

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return accepted


class Timed:
    """The kannel gateway, timing its send() calls."""

    name = "kannel"
    record = None  # Kannel keeps no record of the keys it accepted

    def __init__(self, inner: KannelGateway) -> None:
        self.inner, self.seconds = inner, 0.0

    def send(self, batch: pd.DataFrame, hand_off=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return self.inner.send(batch, hand_off)
        finally:
            self.seconds += time.perf_counter() - start

    def accepted_keys(self, delivery_id: int) -> set[str] | None:
        return None

    def close(self) -> None:
        self.inner.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--rate-messages", type=int, default=1_000)
    parser.add_argument("--kannel-log-level", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="bare client at 1…32 in flight")
    args = parser.parse_args()
    if missing():
        print(f"Kannel is not installed ({', '.join(missing())})", file=sys.stderr)
        return 1
    n = args.messages - args.messages % 2
    ok = True
    with (
        tempfile.TemporaryDirectory() as tmp,
        Kannel(
            Path(tmp) / "kannel", mo_url="http://127.0.0.1:9/mo", log_level=args.kannel_log_level
        ) as kannel,
    ):
        settings = Settings(
            database_url=f"sqlite:///{Path(tmp) / 'smsops.db'}",
            gateway="kannel",
            kannel_url=kannel.sendsms_url,
            kannel_user=kannel.user,
            kannel_password=kannel.password,  # type: ignore[arg-type]
        )
        timed: list[Timed] = []

        def factory(s: Settings) -> Timed:
            timed.append(Timed(KannelGateway(s, concurrency=args.concurrency)))
            return timed[-1]

        ctx = Context.open(settings, gateway_factory=factory)
        users = pd.DataFrame(
            {
                "user_id": [f"u{i}" for i in range(n // 2)],
                "phone": [phone(i) for i in range(n // 2)],
            }
        )
        upsert_users(ctx, users)
        sent_so_far = 0

        def drain() -> None:
            kannel.wait_received(sent_so_far, timeout=300)

        print(f"{n:,} messages per run, {args.concurrency} in flight, Kannel on loopback")
        bare_rates: list[float] = []
        smsops_rates: list[float] = []
        for run in range(1, args.repeat + 1):
            # ABBA: whichever goes first in a run goes second in the next.
            order = ("bare", "smsops") if run % 2 else ("smsops", "bare")
            for which in order:
                if which == "bare":
                    start = time.perf_counter()
                    accepted = asyncio.run(
                        bare(
                            kannel.sendsms_url, kannel.user, kannel.password, n, args.concurrency, n
                        )
                    )
                    bare_rate = n / (time.perf_counter() - start)
                    ok &= accepted == n
                else:
                    accounts.add_tickets(ctx, n)
                    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, TEXTS))
                    start = time.perf_counter()
                    result = dispatch(ctx, created.delivery_id)
                    seconds = time.perf_counter() - start
                    smsops_rate = n / seconds
                    ok &= result.sent == n
                sent_so_far += n
                drain()
            print(
                f"run {run}: bare client {bare_rate:,.0f} msg/s; smsops dispatch "
                f"{smsops_rate:,.0f} msg/s ({result.sent:,} sent; gateway.send "
                f"{timed[-1].seconds:.2f} s of {seconds:.2f} s); "
                f"ratio {smsops_rate / bare_rate:.2f}"
            )
            bare_rates.append(bare_rate)
            smsops_rates.append(smsops_rate)
        for label, pick in (("median", statistics.median), ("best", max)):
            b, o = pick(bare_rates), pick(smsops_rates)
            print(
                f"{label}: bare {b:,.0f} msg/s, smsops {o:,.0f} msg/s, ratio {o / b:.2f} "
                f"(target ≥ 0.80: {'met' if o / b >= 0.8 else 'NOT met'})"
            )

        if args.sweep:
            for c in (1, 2, 4, 8, 16, 32):
                start = time.perf_counter()
                asyncio.run(bare(kannel.sendsms_url, kannel.user, kannel.password, 2000, c, 0))
                rate = 2000 / (time.perf_counter() - start)
                print(f"bare client, {c:>2} in flight: {rate:,.0f} msg/s")
                sent_so_far += 2000
                drain()

        transport = RecordingTransport()
        capped = KannelGateway(
            settings.model_copy(update={"rate_limit": args.rate}),
            concurrency=args.concurrency,
            transport=transport,
        )
        m = args.rate_messages
        batch = pd.DataFrame(
            {
                "delivery_id": 0,
                "seq": range(1, m + 1),
                "message_no": 1,
                "phone": [phone(i) for i in range(m)],
                "text": TEXTS[0],
                "idempotency_key": [f"smsops-0-{i}-1" for i in range(1, m + 1)],
            }
        )
        try:
            results = capped.send(batch)
        finally:
            capped.close()
        times = [t for t, _ in transport.sent]
        peak = max_in_any_second(times)
        ok &= bool((results["status"] == "sent").all()) and peak <= args.rate
        print(
            f"rate cap {args.rate:g}/s: {m:,} messages in {times[-1] - times[0]:.2f} s, at most "
            f"{peak} in any 1-second window ({'within' if peak <= args.rate else 'OVER'} the cap)"
        )
        ctx.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
