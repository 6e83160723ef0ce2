"""Crash and concurrency safety of dispatch (R10, R11, R12), through real processes.

Every test drives the ``smsops`` command line in subprocesses against its own store and
outbox (DESIGN.md quality bars "Crash anywhere (SIGKILL) during dispatch, then resume" and
"Concurrent dispatches never drive the balance below zero"), once on SQLite and once on
PostgreSQL. Nothing is mocked: processes are really killed with SIGKILL and really race
for the store.

To keep the file fast, the user table is imported once per store into a template that
each test copies (a file copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL,
with no process running).
"""

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
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from pg import create_database

import smsops

pytestmark = pytest.mark.slow

RECIPIENTS = 3_000  # x 2 messages = 6,000 pairs in the crash tests
MESSAGES = ("R11 crash test: message one", "R11 crash test: message two")
FUNDED = 20_000  # tickets in the funded template
CLI_TIMEOUT = 120  # seconds; generous, a loaded 2-core machine is slow to import pandas

_script = Path(sys.executable).parent / "smsops"
SMSOPS = [str(_script)] if _script.exists() else [sys.executable, "-m", "smsops.cli"]


# --- helpers -------------------------------------------------------------------------

_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """A failed test must not leave a sender running (or stopped) behind it."""
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


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "postgres":
        return Store(request.getfixturevalue("postgres_admin"))
    return Store(None)


@dataclass
class Site:
    """One smsops installation in a temp dir: its store, outbox and environment."""

    root: Path
    url: str  # SMSOPS_DATABASE_URL
    outbox: Path
    env: dict[str, str]

    def cmd(self, *args: str) -> list[str]:
        return [*SMSOPS, *args]

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.cmd(*args),
            cwd=self.root,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _STARTED.append(proc)
        return proc

    def run(self, *args: str, **env: str) -> dict:
        """Run one command to completion; it must succeed and print one JSON document."""
        return finish(self.popen(*args, **env), args)


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
        time.sleep(0.005)
    return watch.count()


# Where a sender can be when it dies, told apart by the store and the outbox (read while
# the sender is stopped): items marked ``sending`` whose lines the gateway has written but
# whose outcome is not recorded; items marked ``sending`` not handed to the gateway yet;
# or no chunk in flight at all.
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
        time.sleep(0.0005 * (attempt % 9 + 1))
        if proc.poll() is not None:
            break
    proc.kill()
    proc.communicate()
    pytest.fail(f"{what} was never caught in phase {phase}")


def item_states(url: str) -> dict[str, int] | None:
    """Item statuses straight from the store (read-only, committed state), to tell which
    phase a kill hit; None when the stopped sender holds a lock that SQLite readers wait
    for (e.g. frozen in a WAL checkpoint). PostgreSQL readers never wait for writers."""
    query = "SELECT status, count(*) FROM delivery_items GROUP BY status"
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


def scheduled_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def create_scheduled(
    site: Site, create: tuple[str, ...], count: int, margin: float
) -> tuple[list[dict], datetime]:
    """Run ``count`` scheduled ``bulk create`` commands at the same moment, each ``--at``
    ``margin`` seconds ahead. A command that starts so slowly (a busy machine) that its
    time has passed is refused by R12 and saves nothing; it is run again further ahead.
    Returns what they printed and the latest send time given (``scheduled_at`` in the
    output is cut to whole seconds)."""
    created: list[dict] = []
    for _ in range(5):
        at = scheduled_in(margin)
        procs = [site.popen(*create, "--at", at) for _ in range(count - len(created))]
        for proc in procs:
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
            if proc.returncode == 0:
                created.append(json.loads(out))
                last = datetime.fromisoformat(at)
            else:
                assert "R12" in err and ("past" in err or "passed" in err), err
                print(f"send time {margin:.1f} s ahead was too close: {err.strip()}")
        if len(created) == count:
            return created, last
        margin *= 2
    pytest.fail(f"only {len(created)} of {count} scheduled deliveries could be created")


def message_args() -> list[str]:
    return [arg for text in MESSAGES for arg in ("-m", text)]


# --- templates -----------------------------------------------------------------------


@dataclass
class Templates:
    users: pd.DataFrame
    store: Store
    unfunded: str  # URL of a store with the users imported and no tickets
    funded: str  # the same plus FUNDED tickets

    def site(self, root: Path, template: str, **settings: object) -> Site:
        return make_site(root, self.store, template, **settings)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory, store: Store) -> Templates:
    root = tmp_path_factory.mktemp("templates")
    users_csv = root / "users.csv"
    users = write_users(users_csv, RECIPIENTS)
    base = make_site(root / "unfunded", store)
    assert base.run("users", "import", str(users_csv), "--json")["rows"] == RECIPIENTS
    funded = make_site(root / "funded", store, base.url)
    assert funded.run("tickets", "add", str(FUNDED), "--json")["balance"] == FUNDED
    return Templates(users, store, base.url, funded.url)


def expected_pairs(delivery_id: int, users: pd.DataFrame) -> set[tuple[int, str, int]]:
    return {(delivery_id, phone, m) for phone in users["e164"] for m in (1, 2)}


def assert_sent_exactly_once(site: Site, delivery_id: int, users: pd.DataFrame) -> None:
    """R11 after a crash and resume: each (delivery, phone, message) is in the outbox
    once, every item is sent, and the ledger debited exactly the sends."""
    show, balance = run_all(
        site, ("deliveries", "show", str(delivery_id), "--json"), ("tickets", "balance", "--json")
    )
    records = read_outbox(site.outbox)
    keys = Counter(r["idempotency_key"] for r in records)
    twice = {k: n for k, n in keys.items() if n > 1}
    assert not twice, f"{len(twice)} messages sent more than once, e.g. {list(twice)[:5]}"
    pairs = Counter((r["delivery_id"], r["phone"], r["message_no"]) for r in records)
    assert max(pairs.values()) == 1
    expected = expected_pairs(delivery_id, users)
    missing = expected - set(pairs)
    assert not missing, f"{len(missing)} messages never sent, e.g. {sorted(missing)[:5]}"
    assert set(pairs) == expected
    assert all(r["text"] == MESSAGES[r["message_no"] - 1] for r in records)

    statuses = Counter(i["status"] for i in show["items"])
    assert statuses == {"sent": len(expected)}, statuses
    assert show["delivery"]["status"] == "sent"
    assert show["delivery"]["sent"] == len(expected)
    assert show["delivery"]["tickets_used"] == len(expected)
    assert balance == {"balance": FUNDED - len(expected)}


# --- R11: crash anywhere, then resume --------------------------------------------------


@pytest.mark.parametrize(
    ("kill_after_lines", "phase"),
    [
        (150, "handed-not-recorded"),
        (2_000, "marked-not-handed"),
        (4_200, "between-chunks"),
    ],
)
def test_r11_sigkill_mid_dispatch_then_resume_sends_each_message_exactly_once(
    tmp_path: Path, templates: Templates, kill_after_lines: int, phase: str
) -> None:
    # A lease of an hour: the resume must not wait for it, a dead process is seen as
    # dead at once.
    site = templates.site(tmp_path, templates.funded, chunk_size=100, lease_seconds=3600)
    total = 2 * RECIPIENTS

    sender = site.popen("bulk", "create", *message_args(), "--yes", "--json")
    lines, states = kill_in_phase(sender, site, kill_after_lines, phase, "bulk create")
    print(f"killed in {phase} at {lines} outbox lines; items: {states}")
    assert lines < total and states.get("sent", 0) < total, "finished before the kill"

    resumed = site.run("dispatch-due", "--json")["dispatched"]
    assert [(d["delivery_id"], d["resumed"], d["status"]) for d in resumed] == [(1, True, "sent")]
    assert resumed[0]["sent"] == total and resumed[0]["tickets_used"] == total
    assert_sent_exactly_once(site, 1, templates.users)


def test_r11_sigkill_during_the_resume_then_resume_again_sends_each_message_once(
    tmp_path: Path, templates: Templates
) -> None:
    site = templates.site(tmp_path, templates.funded, chunk_size=100, lease_seconds=3600)
    total = 2 * RECIPIENTS

    sender = site.popen("bulk", "create", *message_args(), "--yes", "--json")
    first = kill_in_phase(sender, site, 1_000, "marked-not-handed", "bulk create")

    resumer = site.popen("dispatch-due", "--json")
    second = kill_in_phase(resumer, site, 3_500, "handed-not-recorded", "the first resume")
    print(f"first kill: {first}; second kill: {second}")
    assert second[0] < total, "the resume finished before the kill"

    resumed = site.run("dispatch-due", "--json")["dispatched"]
    assert [(d["delivery_id"], d["resumed"], d["status"]) for d in resumed] == [(1, True, "sent")]
    assert_sent_exactly_once(site, 1, templates.users)


# --- R11 / R10: concurrent dispatches --------------------------------------------------


def test_r11_concurrent_dispatch_never_overdraws(tmp_path: Path, templates: Templates) -> None:
    n, deliveries, balance = 500, 4, 2_500
    users = templates.users.head(n)
    users_csv = tmp_path / "users500.csv"
    users[["user_id", "phone"]].to_csv(users_csv, index=False)
    # Small chunks so that the four sends overlap in time.
    site = templates.site(tmp_path / "site", templates.unfunded, chunk_size=50)
    started = time.monotonic()
    assert site.run("tickets", "add", str(balance), "--json")["balance"] == balance
    one_command = time.monotonic() - started

    # R9 checks each delivery alone at creation (no reservation): all four are accepted
    # although together they need 4,000 tickets.
    create = ("bulk", "create", *message_args(), "--users", str(users_csv), "--yes", "--json")
    created, last_due = create_scheduled(site, create, deliveries, 2 + 6 * one_command)
    assert sorted(c["delivery_id"] for c in created) == [1, 2, 3, 4]
    assert all(c["status"] == "scheduled" and c["tickets_needed"] == 2 * n for c in created)

    time.sleep(max((last_due - datetime.now(UTC)).total_seconds() + 0.2, 0))
    results = run_all(site, *[("dispatch-due", "--json")] * deliveries)

    # Each delivery was sent by exactly one of the four processes.
    taken = Counter(d["delivery_id"] for r in results for d in r["dispatched"])
    assert taken == {1: 1, 2: 1, 3: 1, 4: 1}, taken

    shows = run_all(
        site,
        *[("deliveries", "show", str(i), "--json") for i in range(1, deliveries + 1)],
        ("tickets", "balance", "--json"),
    )
    final = shows.pop()
    assert final == {"balance": 0}, "R11: the balance must be spent exactly, never overdrawn"

    sent_pairs, funded = set(), []
    for show in shows:
        d = show["delivery"]
        its = sorted(show["items"], key=lambda i: (i["seq"], i["message_no"]))
        assert len(its) == 2 * n
        states = [i["status"] for i in its]
        assert set(states) <= {"sent", "error"}, Counter(states)
        assert {i["error"] for i in its if i["status"] == "error"} <= {"insufficient_tickets"}
        k = states.count("sent")
        # R10: inside a delivery, the sends are a prefix of (seq, message_no) order.
        assert states == ["sent"] * k + ["error"] * (2 * n - k), f"delivery {d['id']} out of order"
        assert d["sent"] == k and d["errors"] == 2 * n - k
        assert d["tickets_used"] == k, f"delivery {d['id']}: debits differ from sends"
        assert d["status"] == {0: "failed", 2 * n: "sent"}.get(k, "partially_sent")
        funded.append(k)
        sent_pairs |= {(d["id"], i["phone"], i["message_no"]) for i in its if i["status"] == "sent"}
    assert len(sent_pairs) == balance
    # R10: whoever allocates first is funded whole; one delivery gets the last 500.
    assert sorted(funded) == [0, 500, 1_000, 1_000], funded
    assert sum(s["delivery"]["tickets_used"] for s in shows) == balance

    records = read_outbox(site.outbox)
    assert len(records) == balance
    assert len({r["idempotency_key"] for r in records}) == balance
    assert {(r["delivery_id"], r["phone"], r["message_no"]) for r in records} == sent_pairs


# --- R12: a live sender's delivery is never taken ----------------------------------------


def test_r12_dispatch_due_never_takes_a_delivery_a_live_process_is_sending(
    tmp_path: Path, templates: Templates
) -> None:
    # The rate cap makes the send last 12 s however fast the machine is, in small chunks.
    # A one-second lease: even a heartbeat that falls behind on a busy machine must not let
    # a live sender's delivery be taken.
    site = templates.site(
        tmp_path, templates.funded, chunk_size=20, lease_seconds=1, rate_limit=500
    )
    total = 2 * RECIPIENTS

    sender = site.popen("bulk", "create", *message_args(), "--yes", "--json")
    wait_for_lines(sender, site.outbox, 20, "bulk create")

    overlapped = 0
    while sender.poll() is None and overlapped < 2:
        dispatched = site.run("dispatch-due", "--json")["dispatched"]
        assert all(d["delivery_id"] != 1 for d in dispatched), dispatched
        if sender.poll() is None:
            overlapped += 1
    result = finish(sender, ("bulk", "create"))
    assert overlapped >= 1, "no dispatch-due ran entirely while the delivery was being sent"
    assert result["status"] == "sent" and result["sent"] == total

    records = read_outbox(site.outbox)
    assert len(records) == total
    assert {(r["delivery_id"], r["phone"], r["message_no"]) for r in records} == expected_pairs(
        1, templates.users
    )
