"""The outbox gateway: what it writes, the torn-line repair, and the rate cap."""

from __future__ import annotations

import json
import time

import pandas as pd

from smsops.gateways import idempotency_keys, make_gateway
from smsops.gateways.outbox import OutboxGateway
from smsops.settings import Settings


def batch(n: int, delivery_id: int = 1) -> pd.DataFrame:
    seq = pd.Series(range(n), dtype="int64")
    message_no = pd.Series([1] * n, dtype="int64")
    return pd.DataFrame(
        {
            "delivery_id": delivery_id,
            "seq": seq,
            "message_no": message_no,
            "phone": [f"+8190{i:08d}" for i in range(n)],
            "text": "こんにちは",
            "idempotency_key": idempotency_keys(delivery_id, seq, message_no),
        }
    )


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_message_is_one_line_and_its_key_is_accepted(tmp_path):
    gateway = OutboxGateway(tmp_path / "outbox.jsonl")
    try:
        results = gateway.send(batch(3))
        assert list(results["status"]) == ["sent"] * 3
        written = lines(tmp_path / "outbox.jsonl")
        assert [w["phone"] for w in written] == ["+819000000000", "+819000000001", "+819000000002"]
        assert {w["text"] for w in written} == {"こんにちは"}
        assert gateway.accepted_keys(1) == set(batch(3)["idempotency_key"])
        assert gateway.accepted_keys(2) == set()
    finally:
        gateway.close()


def test_each_line_is_the_outbox_line_whatever_dtypes_the_batch_columns_have(tmp_path):
    """DESIGN.md's outbox line, with text where text belongs, for a group cut from a chunk
    (its index does not start at 0) whose columns are Arrow strings, Python strings or a
    number where a phone should be (#12: the lines are built from Python strings)."""
    group = batch(4).iloc[1:]
    group = group.assign(
        phone=pd.Series([819000000001, "+819000000002", "+819000000003"], index=group.index),
        idempotency_key=group["idempotency_key"].astype("string[pyarrow]"),
        text=pd.Series(["a/b", '"引用"', "改行\nあり"], index=group.index, dtype=object),
    )
    gateway = OutboxGateway(tmp_path / "outbox.jsonl")
    try:
        gateway.send(group)
    finally:
        gateway.close()
    written = lines(tmp_path / "outbox.jsonl")
    fields = ["accepted_at", "delivery_id", "idempotency_key", "message_no", "phone", "text"]
    assert [sorted(w) for w in written] == [fields] * 3
    assert [w["phone"] for w in written] == ["819000000001", "+819000000002", "+819000000003"]
    assert [w["text"] for w in written] == ["a/b", '"引用"', "改行\nあり"]
    assert [w["idempotency_key"] for w in written] == list(group["idempotency_key"])
    assert [(w["delivery_id"], w["message_no"]) for w in written] == [(1, 1)] * 3


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "outbox.jsonl"
    path.write_text('{"delivery_id": 1, "phone": "+8190', encoding="utf-8")  # a writer died
    gateway = OutboxGateway(path)
    try:
        gateway.send(batch(2))
    finally:
        gateway.close()
    assert len(lines(path)) == 2


def test_the_rate_limit_setting_paces_the_outbox_like_a_real_gateway(tmp_path):
    # 41 messages at 20/s: the 21st waits for the 1st to be a second old, the 41st for the
    # 21st, so the batch cannot take less than two seconds.
    settings = Settings(outbox=tmp_path / "outbox.jsonl", rate_limit=20)
    gateway = make_gateway(settings)
    try:
        started = time.monotonic()
        results = gateway.send(batch(41))
        elapsed = time.monotonic() - started
    finally:
        gateway.close()
    assert elapsed >= 2.0, f"41 messages at 20/s took {elapsed:.2f} s"
    assert list(results["status"]) == ["sent"] * 41
    written = lines(tmp_path / "outbox.jsonl")
    assert [w["idempotency_key"] for w in written] == list(batch(41)["idempotency_key"])
    # Written as the turns come, not all at once at the end.
    assert len({w["accepted_at"] for w in written}) > 1


def test_issue13_groups_taken_together_keep_the_cap_and_catch_up_pauses():
    """The outbox takes a group's turns at once (it writes them in one write): any one
    second still holds at most the cap, and the time spent recording between groups and
    chunks (here 20 ms per group, 400 ms per chunk of 1,000) is caught up, not lost."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "integration"))
    from kannel import max_in_any_second

    from smsops.gateways.pacing import RateLimiter

    rate, group, now = 300, 15, [0.0]
    limiter = RateLimiter(rate, clock=lambda: now[0])
    starts: list[float] = []
    for sent in range(0, 6_000, group):
        if sent and sent % 1_000 == 0:
            now[0] += 0.4  # settling one chunk, taking the next
        now[0] += 0.020  # the hand-off transaction and the fsync of each group
        while (wait := limiter._try(group)) > 0:
            now[0] += wait
        starts.extend([now[0]] * group)
    assert max_in_any_second(starts) <= rate
    achieved = len(starts) / (starts[-1] + 0.020)  # from the start to the last write
    assert achieved >= 0.97 * rate, achieved  # taking one turn at a time: 0.86 of the cap
