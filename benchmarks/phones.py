"""Benchmark the vectorized phone classifier against per-row phonenumbers (R3).

Run from the repository root: ``.venv/bin/python -m benchmarks.phones --rows 1000000``.
Exits 1 if the two disagree on any row of the reference sample.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import pandas as pd

from smsops.domain import phones
from smsops.synthetic import messy_phones

COLUMNS = ("e164", "national", "mobile", "reason")
Row = tuple[object, ...]


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def fallback_rows(series: pd.Series) -> int:
    """How many rows ``classify_phones`` sends to its row-wise fallback (counted, not timed)."""
    calls = 0
    original = phones.reference_classify

    def counting(value: object) -> tuple[str | None, str | None, bool, str | None]:
        nonlocal calls
        calls += 1
        return original(value)

    phones.reference_classify = counting
    try:
        phones.classify_phones(series)
    finally:
        phones.reference_classify = original
    return calls


def as_rows(frame: pd.DataFrame) -> list[Row]:
    """Frame rows as tuples, NA as None."""
    cols = [frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in COLUMNS]
    return list(zip(*cols, strict=True))


def main() -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reference-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    series = messy_phones(args.rows, seed=args.seed)
    result: pd.DataFrame = phones.classify_phones(series)  # warm-up and the answer
    vec_s = best_of(3, lambda: phones.classify_phones(series))
    fallback = fallback_rows(series)

    sample = series.iloc[: args.reference_rows].tolist()
    start = time.perf_counter()
    reference: list[Row] = [phones.reference_classify(v) for v in sample]
    ref_s = time.perf_counter() - start

    vec_rate, ref_rate = args.rows / vec_s, len(sample) / ref_s
    print(f"vectorized : {args.rows:>10,} rows in {vec_s:7.3f} s = {vec_rate:>12,.0f} rows/s")
    print(f"reference  : {len(sample):>10,} rows in {ref_s:7.3f} s = {ref_rate:>12,.0f} rows/s")
    print(f"speed ratio: {vec_rate / ref_rate:,.1f}x")
    print(f"fallback   : {fallback:,} rows ({fallback / args.rows:.3%}) went row-wise")
    print("reasons    :", result["reason"].value_counts(dropna=False).to_dict())

    kinds: dict[str, list[tuple[object, Row, Row]]] = defaultdict(list)
    for raw, got, want in zip(sample, as_rows(result.iloc[: len(sample)]), reference, strict=True):
        if got != want:
            diff = ",".join(c for c, g, w in zip(COLUMNS, got, want, strict=True) if g != w)
            kinds[f"{diff}: vectorized {got[3]} / reference {want[3]}"].append((raw, got, want))
    total = sum(map(len, kinds.values()))
    print(f"disagreements: {total:,} of {len(sample):,}")
    for kind, rows in kinds.items():
        print(f"  {kind}  ({len(rows):,} rows)")
        for raw, got, want in rows[:3]:
            print(f"    raw={raw!r}\n      vectorized={got}\n      reference ={want}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
