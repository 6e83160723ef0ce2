"""A real ``smsops serve`` for tests: its own Prefect home and store, started in its own
process group, waited for, and stopped (SIGTERM, then SIGKILL); what it left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SMSOPS = str(Path(sys.executable).parent / "smsops")


def site_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This process's environment without PREFECT_*/SMSOPS_*, plus a store, an outbox and a
    Prefect home in ``tmp_path`` and ``settings`` (``SMSOPS_`` names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SMSOPS_"))}
    env.update(
        {
            "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}",
            "SMSOPS_OUTBOX": str(tmp_path / "outbox.jsonl"),
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            **settings,
        }
    )
    return env


def cli(env: dict[str, str], *args: str) -> dict:
    """Run ``smsops ARGS --json``; it must succeed; its JSON document."""
    done = subprocess.run(
        [SMSOPS, *args, "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass(frozen=True)
class Served:
    api_url: str
    started: dict  # what `smsops serve --json` printed
    process: subprocess.Popen


# The receiver (which needs a token and a port) and the UI are off unless a test asks.
LEAN = ("--no-receiver", "--no-ui")


@contextmanager
def served(
    tmp_path: Path, env: dict[str, str], interval: int, options: Sequence[str] = LEAN
) -> Iterator[Served]:
    """``smsops serve --interval INTERVAL OPTIONS`` until the block ends."""
    log_path, out_path = tmp_path / "serve.log", tmp_path / "serve.json"
    with open(log_path, "w") as log, open(out_path, "w") as out:
        serve = subprocess.Popen(
            [SMSOPS, "serve", "--interval", str(interval), *options, "--json"],
            env=env,
            stdout=out,
            stderr=log,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 240
            while "being served" not in log_path.read_text(errors="replace"):
                assert serve.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "smsops serve did not start"
                time.sleep(1)  # smsops serve, a real process, starting
            started = json.loads(out_path.read_text())
            yield Served(started["api_url"], started, serve)
        finally:
            if serve.poll() is None:  # not stopped by the test
                os.killpg(serve.pid, signal.SIGTERM)
                try:
                    serve.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(serve.pid, signal.SIGKILL)


def stop(serve: Served, timeout: float = 90) -> int:
    """SIGTERM to the serve process alone (as systemd's ``KillMode=mixed`` or ``kill PID``
    sends it); its exit code."""
    serve.process.send_signal(signal.SIGTERM)
    return serve.process.wait(timeout=timeout)


def left_running(tmp_path: Path) -> list[str]:
    """The processes still running for the site in ``tmp_path`` (the serve process, its
    Prefect server, flow runs: everything started with its environment), as "PID CMD"."""
    mark = str(tmp_path).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark not in (proc / "environ").read_bytes():
                continue
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if stat[0] != "Z":  # a zombie has ended (its parent has yet to reap it)
            found.append(f"{proc.name} {cmd.strip()}")
    return found
