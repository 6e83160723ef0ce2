"""``smsops serve`` for real: a scheduled delivery goes out at its time, exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from integration.serving import cli, served, site_env
from support import mobile

# a Prefect server of its own: one such test at a time under `make test`'s two workers
pytestmark = pytest.mark.xdist_group("prefect-server")

SMSOPS = str(Path(sys.executable).parent / "smsops")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_r12_serve_sends_a_scheduled_delivery_at_its_time_exactly_once(tmp_path: Path):
    env = site_env(tmp_path, SMSOPS_CHUNK_SIZE="50")

    def smsops(*args: str) -> dict:
        return cli(env, *args)

    users = tmp_path / "users.csv"
    users.write_text(
        "user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(200)), encoding="utf-8"
    )
    smsops("users", "import", str(users))
    smsops("tickets", "add", "400")

    with served(tmp_path, env, interval=5) as serve:
        # --json: stdout is one JSON document; Prefect's own output went to stderr.
        started = serve.started
        assert started["api_url"].startswith("http://127.0.0.1:")
        assert started["interval"] == 5
        assert set(started["deployments"]) == {  # every flow, preview-bulk included
            "dispatch-due",
            "import-users",
            "import-drops",
            "preview-bulk",
            "create-bulk",
            "dispatch-delivery",
            "resend-failures",
        }

        at = datetime.now(UTC) + timedelta(seconds=10)
        created = smsops(
            "bulk",
            "create",
            "-m",
            "定刻のお知らせ",
            "-m",
            "二通目",
            "--at",
            at.isoformat(),
            "--yes",
        )
        assert created["status"] == "scheduled"
        expected = 400

        # a second dispatcher racing the scheduler at the due time
        while datetime.now(UTC) < at:
            time.sleep(0.2)  # smsops serve (a real process) reads the real time
        racer = subprocess.Popen(
            [SMSOPS, "dispatch-due", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        outbox = tmp_path / "outbox.jsonl"
        while True:
            lines = outbox.read_text(encoding="utf-8").splitlines() if outbox.exists() else []
            if len(lines) >= expected:
                break
            assert datetime.now(UTC) < at + timedelta(seconds=90), (
                f"only {len(lines)} of {expected} sent 90 s after the scheduled time"
            )
            time.sleep(1)  # smsops serve and the racer, real processes, sending
        racer.communicate(timeout=120)
        time.sleep(6)  # one more scheduler round must not send anything again
        records = [json.loads(x) for x in outbox.read_text(encoding="utf-8").splitlines()]

    keys = [r["idempotency_key"] for r in records]
    assert len(keys) == len(set(keys)) == expected  # exactly once, racer or not
    sent_at = [datetime.fromisoformat(r["accepted_at"]) for r in records]
    assert min(sent_at) >= at  # not before its time
    assert max(sent_at) <= at + timedelta(seconds=90)
    shown = smsops("deliveries", "show", str(created["delivery_id"]))
    assert shown["delivery"]["status"] == "sent"
