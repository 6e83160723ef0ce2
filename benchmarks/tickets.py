"""Benchmark R10 ticket allocation: vectorized ``allocate_tickets`` against a plain loop.

Run from the repository root: ``.venv/bin/python -m benchmarks.tickets``.
Exits 1 if the two allocations differ.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from smsops.domain.tickets import allocate_tickets


def loop_allocate(
    recipients: int, messages: int, balance: int
) -> tuple[list[int], list[int], list[str]]:
    """R10 in plain Python: recipient by recipient, message 1 then 2, until tickets run out."""
    seq: list[int] = []
    message_no: list[int] = []
    status: list[str] = []
    left = balance
    for r in range(1, recipients + 1):
        for m in range(1, messages + 1):
            seq.append(r)
            message_no.append(m)
            if left > 0:
                status.append("sent")
                left -= 1
            else:
                status.append("insufficient_tickets")
    return seq, message_no, status


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=5_000_000)
    parser.add_argument("--messages", type=int, default=2)
    parser.add_argument("--balance", type=int, default=7_500_001)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pairs = args.recipients * args.messages

    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        plan = allocate_tickets(args.recipients, args.messages, args.balance)
        times.append(time.perf_counter() - start)
    vec_s = min(times)
    vec_rss = peak_rss_mib()

    start = time.perf_counter()
    seq, message_no, status = loop_allocate(args.recipients, args.messages, args.balance)
    loop_s = time.perf_counter() - start

    same = (
        np.array_equal(plan["seq"].to_numpy(), seq)
        and np.array_equal(plan["message_no"].to_numpy(), message_no)
        and plan["status"].tolist() == status
    )
    vec_rate, loop_rate = pairs / vec_s, pairs / loop_s
    print(
        f"pairs      : {args.recipients:,} recipients x {args.messages} = {pairs:,}, "
        f"balance {args.balance:,}"
    )
    print(f"vectorized : {vec_s:7.3f} s (best of {args.repeat}) = {vec_rate:>14,.0f} pairs/s")
    print(f"loop       : {loop_s:7.3f} s = {loop_rate:>14,.0f} pairs/s")
    print(f"speed ratio: {vec_rate / loop_rate:,.1f}x")
    print(f"peak RSS   : {vec_rss:,.0f} MiB after vectorized, {peak_rss_mib():,.0f} MiB after loop")
    print(f"sent       : {int((plan['status'] == 'sent').sum()):,}; same as loop: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
