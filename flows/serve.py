"""``smsops serve``: one long-running process for a sending host (#11). It serves the
smsops deployments — "dispatch-due" on a short interval so scheduled deliveries go out at
their time, "import-drops" every minute — and, beside them, the receiver of Kannel's
delivery reports and replies.

With ``PREFECT_API_URL`` set it serves against that Prefect server. Without it, it starts
a private ``prefect server start`` on a loopback port (state under ``PREFECT_HOME``,
default ``data/prefect``), with its UI unless ``ui=False``, for as long as it runs:
Prefect's in-process temporary server does not run the scheduler service, so schedules
would never fire there.

Stopping (SIGTERM or SIGINT): no new run is taken; a flow run in progress is cancelled
the way Prefect cancels one (its process gets SIGTERM and ends; the run is marked
Cancelled). A delivery it was sending is left to the next dispatch-due, which resumes a
dead dispatcher at once and sends each pair exactly once (``smsops.services.dispatch``).
Then the receiver stops (recording the reports it holds), then the private Prefect
server. A second signal while it stops changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from smsops.errors import ServerError, ServeStopped

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_prefect_server(home: Path, timeout: float = 90, *, ui: bool = False) -> Iterator[str]:
    """Start ``prefect server start`` on loopback, serving its UI at the root when
    ``ui``; yield its API URL (``http://127.0.0.1:PORT/api``); stop it after."""
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
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


def deployments(interval: float) -> list[Any]:
    """Every smsops flow as a deployment to serve, "dispatch-due" every ``interval``
    seconds. (Typed Any: ``to_deployment`` is typed sync-or-async.)"""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows import campaigns
    from smsops.settings import Settings

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
            interval=timedelta(seconds=Settings().drops_interval),  # SMSOPS_DROPS_INTERVAL
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


@dataclass(frozen=True)
class Serving:
    """What ``serve`` started, handed to its ``ready`` once the deployments are built."""

    api_url: str
    ui_url: str | None  # None: no UI asked for
    deployments: list[str]


def _ui_url(api_url: str) -> str:
    """The UI of the Prefect server at ``api_url``: ``PREFECT_UI_URL`` when set, else
    Prefect's own default for it (the API URL without ``/api``)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return str(PREFECT_UI_URL.value() or api_url.removesuffix("/api"))


def serve(
    interval: float = 10.0,
    home: Path | None = None,
    ready: Callable[[Serving], None] | None = None,
    *,
    ui: bool = True,
    beside: AbstractContextManager[Any] | None = None,
) -> None:
    """Serve every smsops deployment until SIGTERM or SIGINT, then stop everything and
    return. ``beside`` (the receiver) is entered once the Prefect API is up and left after
    the runner has stopped; ``ready`` is called once the deployments are built, just
    before serving starts."""
    from prefect.runner import Runner

    class SmsopsRunner(Runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            if self.stopping:  # a second signal: the runs in progress are being cancelled
                log.info("smsops serve: already stopping")
                return
            super().handle_sigterm(*args, **kwargs)

    runner: list[SmsopsRunner] = []
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if runner:
            runner[0].handle_sigterm()
        elif not stopping:  # once: a second one must not break off the cleanup
            stopping.append(signum)
            raise ServeStopped

    # SIGINT as SIGTERM: Ctrl-C stops the runner the same way (the runner itself takes
    # SIGTERM over once it starts, with the same effect)
    signals = (signal.SIGTERM, signal.SIGINT)
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in signals} if main else {}
    for s in previous:
        signal.signal(s, stop)

    def new_runner() -> SmsopsRunner:
        runner.append(SmsopsRunner(pause_on_shutdown=False))
        return runner[0]

    try:
        _serve(interval, home, ready, ui=ui, beside=beside, new_runner=new_runner)
    except ServeStopped:
        log.info("smsops serve: stopped before serving started")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve(
    interval: float,
    home: Path | None,
    ready: Callable[[Serving], None] | None,
    *,
    ui: bool,
    beside: AbstractContextManager[Any] | None,
    new_runner: Callable[[], Any],
) -> None:
    from prefect.flows import _display_serve_start_message
    from prefect.settings import PREFECT_API_URL, PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

    api_url = os.environ.get("PREFECT_API_URL")
    server = (
        nullcontext(api_url)
        if api_url
        else local_prefect_server(
            home or Path(os.environ.get("PREFECT_HOME", "data/prefect")), ui=ui
        )
    )
    with server as url, beside or nullcontext():
        poll = max(1, min(5, int(interval)))
        with temporary_settings(
            updates={PREFECT_API_URL: url, PREFECT_RUNNER_POLL_FREQUENCY: poll}
        ):
            served = deployments(interval)
            # No process-wide limit: the deployments' own limits bound the runs, and a
            # shared one would let overdue dispatch-due runs (taken oldest first) fill it
            # ahead of a create-bulk. Schedules stay on at shutdown: the next start serves
            # them again (what prefect.serve does, with the runner kept at hand for the
            # signals).
            runner = new_runner()
            for deployment in served:
                runner.add_deployment(deployment)
            if ready is not None:
                ready(Serving(url, _ui_url(url) if ui else None, [d.name for d in served]))
            _display_serve_start_message(*served)
            asyncio.run(runner.start())
            # the runner's last log lines reach the API before the private server stops
            # (else they are lost with an "Error logging to API" on stderr)
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
