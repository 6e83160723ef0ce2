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
from support import mobile

from smsops.services import account as accounts
from smsops.services import deliveries as dl
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
    assert (summary["status"], summary["sent"], summary["tickets_used"]) == ("sent", 2 * n, 2 * n)
    assert accounts.balance(ctx) == 0


def test_a_second_dispatcher_without_join_is_refused_while_one_is_live(ctx):
    from smsops.errors import StateError
    from smsops.services import dispatch as dispatching

    upsert_users(ctx, pd.DataFrame({"user_id": ["a"], "phone": [mobile(1)]}))
    accounts.add_tickets(ctx, 1)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["x"]))
    session = dispatching.begin(ctx, created.delivery_id)
    # this process is alive: the same owner may continue, but dispatch-due skips it
    assert dispatching.due_ids(ctx) == []
    gateway = ctx.gateway()
    assert dispatching.send_chunk(ctx, session, gateway) == 1
    gateway.close()
    assert dispatching.finish(ctx, session).status == "sent"
    with pytest.raises(StateError, match="already sent"):
        dispatching.begin(ctx, created.delivery_id)
