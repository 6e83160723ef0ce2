"""``smsops serve`` after an outage: a backlog of overdue dispatch-due runs collapses into
one, and it does not starve a create-bulk started at the same time (issue 17, item 6)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import mobile

SMSOPS = str(Path(sys.executable).parent / "smsops")
BACKLOG = 30


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_serve_collapses_a_backlog_of_dispatch_due_runs_and_still_runs_create_bulk(
    tmp_path: Path,
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SMSOPS_"))}
    env.update(
        {
            "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}",
            "SMSOPS_OUTBOX": str(tmp_path / "outbox.jsonl"),
            "SMSOPS_IMPORT_ROOT": str(tmp_path),
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
    )

    def smsops(*args: str) -> dict:
        done = subprocess.run(
            [SMSOPS, *args, "--json"], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    users = tmp_path / "users.csv"
    users.write_text(
        "user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(20)), encoding="utf-8"
    )
    smsops("users", "import", str(users))
    smsops("tickets", "add", "20")

    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    stdout = open(tmp_path / "serve.json", "w")  # noqa: SIM115 - closed below
    # a long interval: the only dispatch-due runs are the schedule's first and the backlog
    serve = subprocess.Popen(
        [SMSOPS, "serve", "--interval", "3600", "--json"],
        env=env,
        stdout=stdout,
        stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while "being served" not in (tmp_path / "serve.log").read_text(errors="replace"):
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "smsops serve did not start"
            time.sleep(1)
        api_url = json.loads((tmp_path / "serve.json").read_text())["api_url"]
        states, took, bulk = asyncio.run(_backlog_then_create_bulk(api_url))
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        log.close()
        stdout.close()

    # create-bulk was not starved: it ran and sent while the backlog was being cleared
    assert bulk.is_completed(), bulk.message
    assert took < 90, f"create-bulk took {took:.0f} s behind the backlog"
    lines = (tmp_path / "outbox.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20
    # the backlog collapsed: at most one overdue run did the work (besides the schedule's
    # own first run), every other one was cancelled without running
    kinds = [s.type.value for s, _ in states]
    assert kinds.count("COMPLETED") <= 2, kinds
    assert kinds.count("CANCELLED") >= BACKLOG - 1, kinds
    assert not [s for s, _ in states if s.type.value not in ("COMPLETED", "CANCELLED")]
    reasons = {m for s, m in states if s.type.value == "CANCELLED"}
    assert all(
        r.startswith("collapsed into run") or r == "Deployment concurrency limit reached."
        for r in reasons
    ), reasons


async def _backlog_then_create_bulk(api_url: str):  # type: ignore[no-untyped-def]
    """Make BACKLOG overdue dispatch-due runs (as an outage leaves), start a create-bulk,
    wait for everything to settle; the dispatch-due runs' final states, how long the
    create-bulk took, and its final state."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            due = await client.read_deployment_by_name("dispatch-due/dispatch-due")
            now = datetime.now(UTC)
            for k in range(1, BACKLOG + 1):
                await client.create_flow_run_from_deployment(
                    due.id, state=Scheduled(scheduled_time=now - timedelta(seconds=10 * k))
                )
            started = time.monotonic()
            bulk = await run_deployment(
                "create-bulk/create-bulk",
                parameters={"messages": ["障害のあとで"], "confirm": True},
                timeout=180,
            )
            took = time.monotonic() - started
            dispatch_due = DeploymentFilter(name=DeploymentFilterName(any_=["dispatch-due"]))
            deadline = time.monotonic() + 120
            while True:
                runs = await client.read_flow_runs(deployment_filter=dispatch_due, limit=200)
                overdue = [r for r in runs if r.expected_start_time <= datetime.now(UTC)]
                if all(r.state and r.state.is_final() for r in overdue):
                    break
                assert time.monotonic() < deadline, [r.state for r in overdue]
                await asyncio.sleep(1)  # the served runner works in its own process
            return [(r.state, r.state.message) for r in overdue], took, bulk.state
