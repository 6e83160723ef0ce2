"""Crash and concurrency safety of dispatch (R10, R11, R12), through real processes.

Every test drives the ``smsops`` command line in subprocesses against its own store and
outbox (DESIGN.md quality bars "Crash anywhere (SIGKILL) during dispatch, then resume" and
"Concurrent dispatches never drive the balance below zero"), once on SQLite and once on
PostgreSQL. Nothing is mocked: processes are really killed with SIGKILL and really race
for the store. Deliveries that must already be due are created in this process, on a
clock set back (#14), rather than waited for.

To keep the file fast, the user table is imported once per store into a template that
each test copies (a file copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL,
with no process running).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from clocks import Clock
from sites import (
    MESSAGES,
    Site,
    Store,
    finish,
    kill_in_phase,
    make_site,
    message_args,
    read_outbox,
    reap_started,
    run_all,
    wait_for_lines,
    write_users,
)

from smsops.services import deliveries as dl

pytestmark = pytest.mark.slow

RECIPIENTS = 3_000  # x 2 messages = 6,000 pairs in the crash tests
FUNDED = 20_000  # tickets in the funded template

no_leftovers = pytest.fixture(autouse=True)(reap_started)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "postgres":
        return Store(request.getfixturevalue("postgres_admin"))
    return Store(None)


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
    assert site.run("tickets", "add", str(balance), "--json")["balance"] == balance

    # R9 checks each delivery alone at creation (no reservation): all four are accepted
    # although together they need 4,000 tickets. Created on a clock a minute behind, for a
    # send time that has passed since: due at once for the four dispatch-due processes,
    # which read the real time.
    earlier = Clock(datetime.now(UTC) - timedelta(minutes=1))
    at = (earlier() + timedelta(seconds=30)).isoformat()
    with site.context(earlier) as ctx:
        created = [
            dl.create_bulk(ctx, dl.preview_bulk(ctx, MESSAGES, at=at, users_files=[users_csv]))
            for _ in range(deliveries)
        ]
    assert sorted(c.delivery_id for c in created) == [1, 2, 3, 4]
    assert all(c.status == "scheduled" and c.tickets_needed == 2 * n for c in created)

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


def test_r11_a_sender_killed_on_one_machine_is_resumed_from_another_outbox_exactly_once(
    tmp_path: Path, templates: Templates
) -> None:
    """#13: each machine writes its own outbox. The resume on another machine cannot read
    the dead one's outbox, so the dead dispatcher's marks decide: what it wrote and
    announced is sent, only its last group (a twentieth of a second at its cap) is in
    doubt, and nothing is sent twice across the two outboxes."""
    rate = 2_000
    site = templates.site(tmp_path, templates.funded, chunk_size=1_000, rate_limit=rate)
    total = 2 * RECIPIENTS
    sender = site.popen("bulk", "create", *message_args(), "--yes", "--json")
    lines, _ = kill_in_phase(sender, site, 1_500, "handed-not-recorded", "bulk create")
    assert lines < total

    elsewhere = tmp_path / "other-machine" / "outbox.jsonl"
    resumed = site.run("dispatch-due", "--json", SMSOPS_OUTBOX=str(elsewhere))["dispatched"]
    assert [(d["delivery_id"], d["resumed"]) for d in resumed] == [(1, True)]

    here, there = read_outbox(site.outbox), read_outbox(elsewhere)
    keys = Counter(r["idempotency_key"] for r in [*here, *there])
    assert max(keys.values()) == 1, "a message went out from both machines"
    show = site.run("deliveries", "show", "1", "--json")
    statuses = Counter((i["status"], i.get("error")) for i in show["items"])
    unknown = statuses.get(("error", "outcome_unknown"), 0)
    assert unknown <= rate // 20, statuses  # the last group announced, at most
    assert statuses[("sent", None)] + unknown == total
    # every pair recorded sent is in one outbox; those in doubt may be there too
    assert statuses[("sent", None)] <= len(keys) <= total
    assert show["delivery"]["tickets_used"] == total
