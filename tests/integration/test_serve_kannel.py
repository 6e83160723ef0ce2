"""``smsops serve`` for real, sending through a real Kannel: a create-bulk run started
through Prefect's API (as an operator would) reaches Kannel with the password from the
serving process's environment — never from parameters — and every message arrives at the
fake SMSC (issue 17, item 1)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from integration.kannel import Kannel, missing
from integration.serving import cli, served, site_env
from support import e164, mobile

# a Prefect server of its own: one such test at a time under `make test`'s two workers
pytestmark = pytest.mark.xdist_group("prefect-server")

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
        env = site_env(
            tmp_path,
            SMSOPS_GATEWAY="kannel",
            SMSOPS_KANNEL_URL=k.sendsms_url,
            SMSOPS_KANNEL_USER=k.user,
            SMSOPS_KANNEL_PASSWORD=k.password,
        )
        users = tmp_path / "users.csv"
        users.write_text(
            "user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(1, USERS + 1)),
            encoding="utf-8",
        )
        cli(env, "users", "import", str(users))
        cli(env, "tickets", "add", str(2 * USERS))
        with served(tmp_path, env, interval=3600) as serve:
            state, parameters = asyncio.run(_create_bulk(serve.api_url))
            got = k.wait_received(2 * USERS, timeout=60)

    assert state.is_completed(), (state, state.message)
    assert "password" not in json.dumps(parameters).lower()  # parameters name data only
    assert Counter((r.to, r.text) for r in got) == Counter(
        (e164(i), t) for i in range(1, USERS + 1) for t in TEXTS
    )
    shown = cli(env, "deliveries", "list")["deliveries"][0]
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
