"""``smsops serve`` for real, sending through a real Kannel: a create-bulk run started
through Prefect's API (as an operator would) reaches Kannel with the password from the
serving process's environment — never from parameters — and every message arrives at the
fake SMSC (issue 17, item 1)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from integration.kannel import Kannel, missing
from support import e164, mobile

SMSOPS = str(Path(sys.executable).parent / "smsops")
USERS = 10
TEXTS = ["配信からのお知らせ", "二通目"]


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(bool(missing()), reason="Kannel is not installed")
def test_served_create_bulk_sends_through_kannel_with_the_password_from_the_environment(
    tmp_path: Path,
):
    with Kannel(tmp_path / "kannel", mo_url="http://127.0.0.1:9/mo") as k:
        env = {k_: v for k_, v in os.environ.items() if not k_.startswith(("PREFECT_", "SMSOPS_"))}
        env.update(
            {
                "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}",
                "SMSOPS_GATEWAY": "kannel",
                "SMSOPS_KANNEL_URL": k.sendsms_url,
                "SMSOPS_KANNEL_USER": k.user,
                "SMSOPS_KANNEL_PASSWORD": k.password,
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
            "user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(1, USERS + 1)),
            encoding="utf-8",
        )
        smsops("users", "import", str(users))
        smsops("tickets", "add", str(2 * USERS))

        log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
        stdout = open(tmp_path / "serve.json", "w")  # noqa: SIM115 - closed below
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
            state, parameters = asyncio.run(_create_bulk(api_url))
            got = k.wait_received(2 * USERS, timeout=60)
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
            log.close()
            stdout.close()

    assert state.is_completed(), (state, state.message)
    assert "password" not in json.dumps(parameters).lower()  # parameters name data only
    assert Counter((r.to, r.text) for r in got) == Counter(
        (e164(i), t) for i in range(1, USERS + 1) for t in TEXTS
    )
    shown = smsops("deliveries", "list")["deliveries"][0]
    assert (shown["status"], shown["sent"], shown["errors"]) == ("sent", 2 * USERS, 0)


async def _create_bulk(api_url: str):  # type: ignore[no-untyped-def]
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        run = await run_deployment(
            "create-bulk/create-bulk",
            parameters={"messages": TEXTS, "confirm": True},
            timeout=240,
        )
        return run.state, run.parameters
