"""``smsops serve`` stopped by SIGTERM while dispatch-due is sending (#11 part 3): it
exits 0 with nothing left running, and the next ``dispatch-due`` finishes the delivery,
each pair exactly once (R11)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from integration.kannel import free_port
from integration.serving import cli, left_running, served, site_env, stop
from support import mobile

# a Prefect server of its own: one such test at a time under `make test`'s two workers
pytestmark = pytest.mark.xdist_group("prefect-server")

USERS = 30
PAIRS = 2 * USERS
RATE = 5  # messages/s: the delivery takes 12 s, long enough to stop it half-way
UNFINISHED = {"scheduled", "queued", "sending", "paused"}


def outbox(tmp_path: Path) -> list[dict]:
    path = tmp_path / "outbox.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_r11_sigterm_mid_dispatch_stops_serve_cleanly_and_dispatch_due_sends_each_pair_once(
    tmp_path: Path,
):
    env = site_env(
        tmp_path,
        SMSOPS_RATE_LIMIT=str(RATE),
        SMSOPS_CHUNK_SIZE="10",
        SMSOPS_RECEIVER_TOKEN="serve-stop-test-token",
        SMSOPS_RECEIVER_PORT=str(free_port()),
    )
    users = tmp_path / "users.csv"
    users.write_text(
        "user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(USERS)), encoding="utf-8"
    )
    cli(env, "users", "import", str(users))
    cli(env, "tickets", "add", str(PAIRS))

    with served(tmp_path, env, interval=2, options=("--no-ui",)) as serve:
        health = f"{serve.started['receiver_url']}/health"
        assert httpx.get(health, timeout=5).text == "ok"  # the receiver is in the process
        assert len(left_running(tmp_path)) >= 2  # serve and its Prefect server are seen
        at = datetime.now(UTC) + timedelta(seconds=10)
        delivery = cli(
            env, "bulk", "create", "-m", "一通目", "-m", "二通目", "--at", at.isoformat(), "--yes"
        )
        deadline = at + timedelta(seconds=90)
        while len(outbox(tmp_path)) < 10:  # dispatch-due is sending: stop it half-way
            assert datetime.now(UTC) < deadline, "dispatch-due did not start sending"
            time.sleep(0.2)  # smsops serve, a real process, sending
        code = stop(serve)
        at_stop = len(outbox(tmp_path))

    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert at_stop < PAIRS  # it was stopped mid-dispatch
    assert left_running(tmp_path) == []  # no Prefect server, flow run or receiver left
    with pytest.raises(httpx.ConnectError):
        httpx.get(health, timeout=5)
    time.sleep(2)  # a flow run that outlived serve would go on writing to the outbox
    assert len(outbox(tmp_path)) == at_stop
    left = cli(env, "deliveries", "show", str(delivery["delivery_id"]))["delivery"]
    assert left["status"] == "sending" and left["sent"] < PAIRS  # for dispatch-due to resume

    resumed = cli(env, "dispatch-due")["dispatched"]
    assert [(r["status"], r["sent"], r["resumed"]) for r in resumed] == [("sent", PAIRS, True)]
    assert cli(env, "dispatch-due")["dispatched"] == []  # finished, exactly once
    keys = [r["idempotency_key"] for r in outbox(tmp_path)]
    assert len(keys) == len(set(keys)) == PAIRS  # every pair once: none twice, none lost
    listed = cli(env, "deliveries", "list")["deliveries"]
    assert not [d for d in listed if d["status"] in UNFINISHED]
    shown = cli(env, "deliveries", "show", str(delivery["delivery_id"]))
    assert {i["status"] for i in shown["items"]} == {"sent"}
