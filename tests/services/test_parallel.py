"""Several dispatchers on one large delivery (R11): different chunks each, nothing sent
twice, the delivery closed once. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from clocks import Clock
from support import mobile

from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.people import upsert_users

SMSOPS = str(Path(sys.executable).parent / "smsops")


@pytest.mark.slow
def test_r11_dispatchers_share_one_delivery_without_sending_twice(ctx, settings):
    n = 1500
    upsert_users(
        ctx,
        pd.DataFrame(
            {"user_id": [f"u{i}" for i in range(n)], "phone": [mobile(i) for i in range(n)]}
        ),
    )
    accounts.add_tickets(ctx, 2 * n)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["一通目", "二通目"]))
    env = {
        "SMSOPS_DATABASE_URL": settings.database_url,
        "SMSOPS_OUTBOX": str(settings.outbox),
        "SMSOPS_CHUNK_SIZE": "20",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    workers = [
        subprocess.Popen(
            [SMSOPS, "dispatch", str(created.delivery_id), "--join", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["handled"] for r in results) == 2 * n
    assert sum(1 for r in results if r["handled"] > 0) >= 2  # the work was shared
    assert sorted(r["status"] for r in results).count("sent") >= 1
    lines = [json.loads(x) for x in Path(settings.outbox).read_text().splitlines()]
    keys = [x["idempotency_key"] for x in lines]
    assert len(keys) == len(set(keys)) == 2 * n
    summary = dl.delivery_summary(ctx, created.delivery_id)
    assert (summary.status, summary.sent, summary.tickets_used) == ("sent", 2 * n, 2 * n)
    assert accounts.balance(ctx) == 0


def test_a_second_dispatcher_without_join_is_refused_while_one_is_live(ctx):
    from smsops.errors import StateError
    from smsops.services import dispatch as dispatching

    upsert_users(ctx, pd.DataFrame({"user_id": ["a"], "phone": [mobile(1)]}))
    accounts.add_tickets(ctx, 1)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["x"]))
    claim = dispatching.begin(ctx, created.delivery_id)
    # this process is alive: the same owner may continue, but dispatch-due skips it
    assert dispatching.due_ids(ctx) == []
    gateway = ctx.gateway()
    assert dispatching.send_chunk(ctx, claim, gateway) == 1
    gateway.close()
    assert dispatching.finish(ctx, claim).status == "sent"
    with pytest.raises(StateError, match="already sent"):
        dispatching.begin(ctx, created.delivery_id)


@pytest.mark.slow
def test_r10_r11_four_workers_four_deliveries_balance_for_two_and_a_half(ctx, settings):
    """4 processes dispatch 4 deliveries of 1,000 pairs against 2,500 tickets: exactly the
    balance is debited, each item ends sent or insufficient_tickets, none sent twice."""
    from collections import Counter
    from datetime import UTC, datetime, timedelta

    n = 500
    upsert_users(
        ctx,
        pd.DataFrame(
            {"user_id": [f"u{i}" for i in range(n)], "phone": [mobile(i) for i in range(n)]}
        ),
    )
    accounts.add_tickets(ctx, 2_500)
    # Created on a clock a minute behind (#14), for a send time that has passed since: due
    # at once for the workers, which read the real time.
    earlier = Context.open(settings, clock=Clock(datetime.now(UTC) - timedelta(minutes=1)))
    due = (earlier.clock() + timedelta(seconds=30)).isoformat()
    try:
        ids = [
            dl.create_bulk(earlier, dl.preview_bulk(earlier, ["一", "二"], at=due)).delivery_id
            for _ in range(4)
        ]  # R9 checks each alone: all four accepted
    finally:
        earlier.close()
    env = {
        "SMSOPS_DATABASE_URL": settings.database_url,
        "SMSOPS_OUTBOX": str(settings.outbox),
        "SMSOPS_CHUNK_SIZE": "50",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    workers = [
        subprocess.Popen(
            [SMSOPS, "dispatch-due", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    taken = Counter()
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        taken.update(d["delivery_id"] for d in json.loads(out)["dispatched"])
    assert taken == dict.fromkeys(ids, 1)  # each delivery sent by exactly one worker
    assert accounts.balance(ctx) == 0  # exactly the balance debited, never below zero
    sent = []
    for d in ids:
        items = dl.delivery_items(ctx, d)
        assert set(items["status"]) <= {"sent", "error"}
        assert set(items.loc[items["status"] == "error", "error"]) <= {"insufficient_tickets"}
        k = int((items["status"] == "sent").sum())
        assert items["status"].tolist() == ["sent"] * k + ["error"] * (2 * n - k)  # R10
        assert dl.delivery_summary(ctx, d).tickets_used == k
        sent.append(k)
    assert sorted(sent) == [0, 500, 1_000, 1_000]
    keys = [
        json.loads(x)["idempotency_key"] for x in Path(settings.outbox).read_text().splitlines()
    ]
    assert len(keys) == len(set(keys)) == 2_500
