"""A sender killed (SIGKILL) while it sends through a real Kannel (bearerbox + smsbox +
fakesmsc on loopback), which cannot say afterwards which messages it took: only the
messages on the wire at the kill may be in doubt (``outcome_unknown``, a handful, ticket
spent, never resent), never a chunk; ``dispatch-due`` sends every other one, and no
number receives a message twice."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from integration.kannel import Kannel, missing
from sites import CLI_TIMEOUT, Store, funded_site, ledger_debits, store_items, write_users

from smsops.gateways.kannel import WINDOW

USERS = 3_000  # 2 s at 1,500/s; killed after 1 s
TEXT = "冬のセール、本日より！"
# at most: the hand-off window and the requests in flight (4 by default): 16
IN_DOUBT = WINDOW + 4


@pytest.mark.skipif(bool(missing()), reason="Kannel is not installed")
def test_a_sender_killed_mid_send_through_kannel_leaves_only_the_in_flight_in_doubt(
    tmp_path: Path, store: Store
):
    with Kannel(tmp_path / "kannel", mo_url="http://127.0.0.1:9/mo") as k:
        site = funded_site(
            tmp_path / "site",
            store,
            USERS,
            USERS,
            **k.site_settings(),
            rate_limit=1500,
        )
        phones = set(write_users(tmp_path / "again.csv", USERS)["e164"])
        sender = site.popen("bulk", "create", "-m", TEXT, "--yes")
        deadline = time.monotonic() + CLI_TIMEOUT
        while not k.received():
            assert sender.poll() is None, sender.communicate()
            assert time.monotonic() < deadline, "nothing reached the fake SMSC"
            time.sleep(0.01)  # the sender and Kannel, real processes
        time.sleep(1)  # the sender sends a while longer before it is killed
        os.kill(sender.pid, signal.SIGKILL)
        sender.communicate(timeout=CLI_TIMEOUT)
        at_kill = len(k.received())
        assert 0 < at_kill < USERS, at_kill  # killed mid-send

        resumed = site.popen("dispatch-due", "--json")
        _, problems = resumed.communicate(timeout=CLI_TIMEOUT)
        assert resumed.returncode == 0, problems
        items = store_items(site.url, 1)
        unknown = int((items["error"] == "outcome_unknown").sum())
        sent = int((items["status"] == "sent").sum())
        assert unknown <= IN_DOUBT, f"{unknown} pairs written off as outcome_unknown"
        assert sent + unknown == USERS, items["status"].value_counts()
        got = k.wait_received(sent, timeout=60)
        time.sleep(1)  # anything Kannel still had queued arrives now
        got = k.received()

    counts = Counter(r.to for r in got)
    twice = {p: n for p, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} numbers got the message twice"
    assert all(r.text == TEXT for r in got)
    assert set(counts) <= phones
    # every pair not in doubt reached the SMSC; those in doubt at most once
    assert len(got) >= sent
    assert ledger_debits(site.url) == sent + unknown
    print(f"at the kill: {at_kill} at the SMSC; afterwards {unknown} outcome_unknown")
