"""Driving smsops installations through real processes, for the crash, concurrency and
fault tests: a site (store + outbox + environment), its CLI in subprocesses, and the
outbox and store read back while a sender is alive, stopped or dead."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from pg import create_database

import smsops
from smsops.services.context import Context
from smsops.settings import Settings

CLI_TIMEOUT = 120  # seconds; generous, a loaded 2-core machine is slow to import pandas
MESSAGES = ("R11 crash test: message one", "R11 crash test: message two")

_script = Path(sys.executable).parent / "smsops"
SMSOPS = [str(_script)] if _script.exists() else [sys.executable, "-m", "smsops.cli"]


# --- helpers -------------------------------------------------------------------------

_STARTED: list[subprocess.Popen[str]] = []


def reap_started() -> Iterator[None]:
    """A failed test must not leave a sender running (or stopped) behind it: use as an
    autouse fixture (``no_leftovers = pytest.fixture(autouse=True)(reap_started)``)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@dataclass(frozen=True)
class Store:
    """Where sites keep their data: SQLite files, or databases on the session's
    throwaway PostgreSQL server."""

    admin_url: str | None  # None: SQLite

    def new(self, root: Path, template: str | None) -> str:
        """A fresh database for a site in ``root``, a copy of ``template`` if given."""
        if self.admin_url is not None:
            return create_database(self.admin_url, template)
        db = root / "smsops.db"
        if template is not None:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{template.removeprefix('sqlite:///')}{suffix}")
                if src.exists():
                    shutil.copy2(src, f"{db}{suffix}")
        return f"sqlite:///{db}"


@dataclass
class Site:
    """One smsops installation in a temp dir: its store, outbox and environment."""

    root: Path
    url: str  # SMSOPS_DATABASE_URL
    outbox: Path
    env: dict[str, str]

    def cmd(self, *args: str) -> list[str]:
        return [*SMSOPS, *args]

    def popen(
        self, *args: str, preexec_fn: Callable[[], None] | None = None, **env: str
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.cmd(*args),
            cwd=self.root,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        _STARTED.append(proc)
        return proc

    def run(self, *args: str, **env: str) -> dict:
        """Run one command to completion; it must succeed and print one JSON document."""
        return finish(self.popen(*args, **env), args)

    @contextmanager
    def context(self, clock: Callable[[], datetime]) -> Iterator[Context]:
        """This site's services in this process, on ``clock`` (#14)."""
        settings = Settings(
            **{
                k.removeprefix("SMSOPS_").lower(): v
                for k, v in self.env.items()
                if k.startswith("SMSOPS_")
            }
        )
        ctx = Context.open(settings, clock=clock)
        try:
            yield ctx
        finally:
            ctx.close()


def finish(proc: subprocess.Popen[str], args: tuple[str, ...] = ()) -> dict:
    out, err = proc.communicate(timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, f"smsops {' '.join(args)} exited {proc.returncode}: {err}"
    return json.loads(out)


def run_all(site: Site, *commands: tuple[str, ...]) -> list[dict]:
    """Start several commands at the same moment, then wait for all of them."""
    procs = [site.popen(*c) for c in commands]
    return [finish(p, c) for p, c in zip(procs, commands, strict=True)]


def make_site(root: Path, store: Store, template: str | None = None, **settings: object) -> Site:
    root.mkdir(parents=True, exist_ok=True)
    url = store.new(root, template)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSOPS_")}
    env.update(
        SMSOPS_DATABASE_URL=url,
        SMSOPS_OUTBOX=str(root / "outbox.jsonl"),
        SMSOPS_GATEWAY="outbox",
    )
    env.update({f"SMSOPS_{k.upper()}": str(v) for k, v in settings.items()})
    return Site(root, url, root / "outbox.jsonl", env)


def write_users(path: Path, n: int) -> pd.DataFrame:
    """``n`` users with distinct, clean mobile numbers (090-1000-0000 upwards)."""
    users = pd.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in range(n)],
            "phone": [f"090{10_000_000 + i:08d}" for i in range(n)],
        }
    )
    classified = smsops.classify_phones(users["phone"])
    assert classified["mobile"].all() and classified["e164"].is_unique
    users.to_csv(path, index=False)
    return users.assign(e164=classified["e164"].astype(str))


def read_outbox(path: Path) -> list[dict]:
    """Every line of the outbox; each must be one whole JSON record."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the outbox ends in a torn line"
    return [json.loads(line) for line in data.splitlines()]


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


class OutboxWatch:
    """Counts outbox lines as they are appended, cheaply enough to poll every few ms."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.lines = 0

    def count(self) -> int:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return 0
        if size < self.pos:  # a torn line was cut off: count again
            self.pos = self.lines = 0
        if size > self.pos:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read(size - self.pos)
            self.lines += data.count(b"\n")
            self.pos += len(data)
        return self.lines


def wait_for_lines(proc: subprocess.Popen[str], outbox: Path, threshold: int, what: str) -> int:
    """Wait until the outbox holds ``threshold`` lines while ``proc`` is still running."""
    watch = OutboxWatch(outbox)
    deadline = time.monotonic() + CLI_TIMEOUT
    while watch.count() < threshold:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(
                f"{what} ended (exit {proc.returncode}) before the outbox reached "
                f"{threshold} lines ({watch.count()}): {out} {err}"
            )
        assert time.monotonic() < deadline, f"{what}: outbox stuck at {watch.count()} lines"
        time.sleep(0.005)  # the sender, a real process, writing the outbox
    return watch.count()


# Where a sender can be when it dies, told apart by the store and the outbox (read while
# the sender is stopped): items of a claimed chunk (``sending`` in item_states) whose
# lines the gateway has written but whose outcome is not recorded; items of a claimed
# chunk not handed to the gateway yet; or no chunk in flight at all.
PHASES = {
    "handed-not-recorded": lambda lines, st: st.get("sending", 0) > 0 and lines > st.get("sent", 0),
    "marked-not-handed": lambda lines, st: st.get("sending", 0) > 0 and lines == st.get("sent", 0),
    "between-chunks": lambda lines, st: st.get("sending", 0) == 0,
}


def _stopped(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    try:
        return all(
            (t / "stat").read_text().rsplit(")", 1)[1].split()[0] in "tT" for t in tasks.iterdir()
        )
    except (OSError, IndexError):
        return False


def kill_in_phase(
    proc: subprocess.Popen[str], site: Site, threshold: int, phase: str, what: str
) -> tuple[int, dict[str, int]]:
    """Once the outbox holds ``threshold`` lines, SIGKILL ``proc`` at a moment when it is
    in ``phase`` (see PHASES). It is frozen with SIGSTOP to look at the store and the
    outbox, and let go with SIGCONT until the phase is the one wanted."""
    wait_for_lines(proc, site.outbox, threshold, what)
    for attempt in range(2_000):
        os.kill(proc.pid, signal.SIGSTOP)
        while not _stopped(proc.pid):
            assert proc.poll() is None, f"{what} ended before it was killed in phase {phase}"
        lines, states = complete_lines(site.outbox), item_states(site.url)
        if states is not None and PHASES[phase](lines, states):
            print(f"{what}: caught in {phase} at the {attempt + 1}. look")
            os.kill(proc.pid, signal.SIGKILL)
            # Reap it: a killed child stays a zombie (with its /proc entry) until its
            # parent waits for it, and smsops's liveness check reads /proc.
            proc.communicate(timeout=CLI_TIMEOUT)
            assert proc.returncode == -signal.SIGKILL, f"{what} exited {proc.returncode}"
            return lines, states
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.0005 * (attempt % 9 + 1))  # let the sender (a real process) run on
        if proc.poll() is not None:
            break
    proc.kill()
    proc.communicate()
    pytest.fail(f"{what} was never caught in phase {phase}")


def item_states(url: str) -> dict[str, int] | None:
    """Item statuses straight from the store (read-only, committed state), to tell which
    phase a kill hit; None when the stopped sender holds a lock that SQLite readers wait
    for (e.g. frozen in a WAL checkpoint). PostgreSQL readers never wait for writers."""
    query = (  # a pending item inside a dispatcher's claimed range counts as "sending"
        "SELECT CASE WHEN i.status = 'pending' AND EXISTS (SELECT 1 FROM dispatchers d "
        "WHERE d.delivery_id = i.delivery_id AND (i.seq, i.message_no) >= "
        "(d.from_seq, d.from_message_no) AND (i.seq, i.message_no) <= (d.to_seq, d.to_message_no)"
        ") THEN 'sending' ELSE i.status END AS state, count(*) FROM delivery_items i GROUP BY state"
    )
    if url.startswith("postgresql"):
        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=10) as pg:
            return dict(pg.execute(query).fetchall())
    db = url.removeprefix("sqlite:///")
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)) as conn:
            return dict(conn.execute(query).fetchall())
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None
        raise


def message_args() -> list[str]:
    return [arg for text in MESSAGES for arg in ("-m", text)]


def outbox_keys(path: Path) -> Counter[str]:
    """How many times each idempotency key is in the outbox (whole lines only)."""
    return Counter(r["idempotency_key"] for r in read_outbox(path))


def store_items(url: str, delivery_id: int) -> pd.DataFrame:
    """The delivery's items straight from the store: seq, message_no, status, error."""
    query = (
        "SELECT seq, message_no, status, error FROM delivery_items "
        f"WHERE delivery_id = {int(delivery_id)} ORDER BY seq, message_no"
    )
    if url.startswith("postgresql"):
        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=10) as pg:
            rows = pg.execute(query).fetchall()
    else:
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as conn:
            rows = conn.execute(query).fetchall()
    return pd.DataFrame(rows, columns=["seq", "message_no", "status", "error"])


def ledger_debits(url: str) -> int:
    """Tickets debited and not refunded (the ledger's debits plus refunds, as a count)."""
    query = "SELECT -coalesce(sum(amount), 0) FROM ledger WHERE kind IN ('debit', 'refund')"
    if url.startswith("postgresql"):
        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=10) as pg:
            return int(pg.execute(query).fetchone()[0])
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as conn:
        return int(conn.execute(query).fetchone()[0])


def keys_of(delivery_id: int, items: pd.DataFrame) -> list[str]:
    pairs = zip(items["seq"], items["message_no"], strict=True)
    return [f"smsops-{delivery_id}-{s}-{m}" for s, m in pairs]


def funded_site(root: Path, store: Store, users: int, tickets: int, **settings: object) -> Site:
    """A site with ``users`` clean mobiles imported and ``tickets`` bought."""
    site = make_site(root, store, **settings)
    write_users(root / "users.csv", users)
    assert site.run("users", "import", str(root / "users.csv"), "--json")["rows"] == users
    assert site.run("tickets", "add", str(tickets), "--json")["balance"] == tickets
    return site
