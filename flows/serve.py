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

from smsops.errors import ServerError


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
                raise ServerError(f"the Prefect server exited; see {home / 'server.log'}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"the Prefect server did not start in {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# Flow runs at once per deployment. Each sending deployment has its own slots, so a
# backlog of scheduled runs never takes the slots a create-bulk needs; runs beyond a limit
# wait for a slot (Prefect's ENQUEUE) — except dispatch-due, where a second run while one
# is sending would only find nothing left to do: it is cancelled (CANCEL_NEW).
LIMITS: dict[str, int] = {
    "dispatch-due": 1,
    "create-bulk": 2,
    "dispatch-delivery": 2,
    "resend-failures": 1,
    "import-users": 1,
    "import-drops": 1,
    "preview-bulk": 2,
}


DROPS_INTERVAL = 60  # seconds between passes over the drop folder (#11)


def deployments(interval: float) -> list[Any]:
    """Every smsops flow as a deployment to serve, "dispatch-due" every ``interval``
    seconds. (Typed Any: ``to_deployment`` is typed sync-or-async.)"""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows import campaigns

    def limit(name: str) -> ConcurrencyLimitConfig:
        strategy = (  # a second pass while one runs would find nothing new to take
            ConcurrencyLimitStrategy.CANCEL_NEW
            if name in ("dispatch-due", "import-drops")
            else ConcurrencyLimitStrategy.ENQUEUE
        )
        return ConcurrencyLimitConfig(limit=LIMITS[name], collision_strategy=strategy)

    return [
        campaigns.dispatch_due.to_deployment(
            name="dispatch-due",
            interval=timedelta(seconds=interval),
            description="Send scheduled deliveries at their time; resume interrupted ones.",
            concurrency_limit=limit("dispatch-due"),
        ),
        campaigns.import_drops.to_deployment(
            name="import-drops",
            interval=timedelta(seconds=DROPS_INTERVAL),
            description="Import each whole file of the drop folder (SMSOPS_DROPS), then "
            "move it to processed/ or rejected/.",
            concurrency_limit=limit("import-drops"),
        ),
        *(
            f.to_deployment(name=f.name, concurrency_limit=limit(f.name))
            for f in (
                campaigns.import_users,
                campaigns.preview_bulk,
                campaigns.create_bulk,
                campaigns.dispatch_delivery,
                campaigns.resend_failures,
            )
        ),
    ]


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

        poll = max(1, min(5, int(interval)))
        with temporary_settings(
            updates={PREFECT_API_URL: url, PREFECT_RUNNER_POLL_FREQUENCY: poll}
        ):
            served = deployments(interval)
            if ready is not None:
                ready(url, [d.name for d in served])
            # No process-wide limit: the deployments' own limits bound the runs, and a
            # shared one would let overdue dispatch-due runs (taken oldest first) fill it
            # ahead of a create-bulk.
            prefect_serve(*served, pause_on_shutdown=False)
