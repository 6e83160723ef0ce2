"""What Prefect costs: start-up, and the share of a 100k-recipient dispatch that is
orchestration (flow + one task per chunk) rather than sending.

    python -m benchmarks.prefect_overhead [--recipients 100000] [--chunk-size 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

_STARTUP = """
import time; t = time.perf_counter()
from prefect import flow
@flow
def noop() -> int:
    return 1
t1 = time.perf_counter(); noop(); t2 = time.perf_counter()
print(f"{t1 - t:.2f} {t2 - t1:.2f}")
"""


def startup(home: Path) -> tuple[float, float]:
    """(import seconds, first flow run seconds incl. the temporary server) in a fresh process."""
    env = {**os.environ, "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-c", _STARTUP], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="smsops-prefect-"))
    imp, first = startup(tmp / "prefect-startup")
    print(f"prefect import            : {imp:6.2f} s")
    print(f"first flow run (temp srv) : {first:6.2f} s")

    os.environ.update({
        "PREFECT_HOME": str(tmp / "prefect"), "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "SMSOPS_DATABASE_URL": f"sqlite:///{tmp / 'smsops.db'}",
        "SMSOPS_OUTBOX": str(tmp / "outbox.jsonl"),
        "SMSOPS_CHUNK_SIZE": str(args.chunk_size),
    })
    from prefect.testing.utilities import prefect_test_harness

    from flows import campaigns
    from smsops.services import account, deliveries, dispatch, people

    ctx = campaigns._context()
    n = args.recipients
    people.upsert_users(ctx, pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)],
        "phone": [f"090{10_000_000 + i:08d}" for i in range(n)],
    }))
    account.add_tickets(ctx, 2 * n)

    def new_delivery() -> int:
        preview = deliveries.preview_bulk(ctx, ["ベンチマーク"])
        return deliveries.create_bulk(ctx, preview).delivery_id

    plain_id = new_delivery()
    t = time.perf_counter()
    dispatch.dispatch(ctx, plain_id)
    plain = time.perf_counter() - t

    with prefect_test_harness(server_startup_timeout=120):
        flow_id = new_delivery()
        t = time.perf_counter()
        result = campaigns.dispatch_delivery(flow_id)
        flowed = time.perf_counter() - t
    chunks = -(-n // args.chunk_size)
    overhead = flowed - plain
    print(f"dispatch, service only    : {plain:6.2f} s  ({n / plain:,.0f} msg/s)")
    print(f"dispatch, Prefect flow    : {flowed:6.2f} s  ({n / flowed:,.0f} msg/s), "
          f"{chunks} chunk tasks, sent {result['sent']:,}")
    print(f"orchestration overhead    : {overhead:6.2f} s = {overhead / flowed:.0%} of the "
          f"flow, {overhead / (chunks + 3) * 1000:.0f} ms per task")


if __name__ == "__main__":
    main()
