"""``smsops serve``: one long-running process serving the smsops deployments, with
"dispatch-due" on a short interval so scheduled deliveries go out at their time.

With ``PREFECT_API_URL`` set it serves against that Prefect server. Without it, it starts
a private ``prefect server start`` on a loopback port (state under ``PREFECT_HOME``,
default ``data/prefect``) for as long as it runs: Prefect's in-process temporary server
does not run the scheduler service, so schedules would never fire there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from smsops.errors import SmsopsError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_prefect_server(home: Path, timeout: float = 90) -> Iterator[str]:
    """Start ``prefect server start`` on loopback; yield its API URL; stop it after."""
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "false"),
        # schedule interval runs promptly (the default loop is a minute)
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    }
    log = open(home / "server.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SmsopsError(f"the Prefect server exited; see {home / 'server.log'}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SmsopsError(f"the Prefect server did not start in {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def serve(
    interval: float = 10.0,
    home: Path | None = None,
    ready: Callable[[str, list[str]], None] | None = None,
) -> None:
    """Serve every smsops deployment until interrupted; ``ready(api_url, deployment
    names)`` is called once they are built, just before serving starts."""
    api_url = os.environ.get("PREFECT_API_URL")
    server = (
        nullcontext(api_url)
        if api_url
        else local_prefect_server(home or Path(os.environ.get("PREFECT_HOME", "data/prefect")))
    )
    with server as url:
        from prefect import serve as prefect_serve
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_RUNNER_POLL_FREQUENCY,
            temporary_settings,
        )

        from flows import campaigns

        poll = max(1, min(5, int(interval)))
        with temporary_settings(
            updates={PREFECT_API_URL: url, PREFECT_RUNNER_POLL_FREQUENCY: poll}
        ):
            deployments: list[Any] = [  # to_deployment is typed sync-or-async
                campaigns.dispatch_due.to_deployment(
                    name="dispatch-due",
                    interval=timedelta(seconds=interval),
                    description="Send scheduled deliveries at their time; resume interrupted ones.",
                ),
                campaigns.import_users.to_deployment(name="import-users"),
                campaigns.create_bulk.to_deployment(name="create-bulk"),
                campaigns.dispatch_delivery.to_deployment(name="dispatch-delivery"),
                campaigns.resend_failures.to_deployment(name="resend-failures"),
            ]
            if ready is not None:
                ready(url, [d.name for d in deployments])
            prefect_serve(
                *deployments,
                pause_on_shutdown=False,
                limit=2,  # flow runs at once: no pile-up behind a long delivery
            )
