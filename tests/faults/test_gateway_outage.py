"""The gateway goes away mid-send (smsbox stopped for 10 s while bearerbox keeps its
queue): the delivery pauses with its unsent pairs pending — none written off as
``gateway_unavailable`` — and after smsbox returns ``dispatch-due`` sends the rest, every
pair exactly once (issue 17, "outage = pause, not failure")."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from integration.kannel import Kannel, missing
from sites import CLI_TIMEOUT, Store, funded_site, ledger_debits, store_items

USERS = 2_500  # x 2 messages = 5,000 pairs at 500/s: 10 s
TEXTS = ("冬のセール、本日より！", "詳細はアプリで")
OUTAGE = 10.0  # seconds


@pytest.mark.skipif(bool(missing()), reason="Kannel is not installed")
def test_smsbox_down_pauses_the_delivery_and_dispatch_due_finishes_it_exactly_once(
    tmp_path: Path, store: Store
):
    with Kannel(tmp_path / "kannel", mo_url="http://127.0.0.1:9/mo") as k:
        site = funded_site(
            tmp_path / "site",
            store,
            USERS,
            2 * USERS,
            **k.site_settings(),
            rate_limit=500,
            chunk_size=1000,
            pause_seconds=1,
        )
        args = [a for t in TEXTS for a in ("-m", t)]
        sender = site.popen("bulk", "create", *args, "--yes", "--json")
        deadline = time.monotonic() + CLI_TIMEOUT
        while len(k.received()) < 1000:
            assert sender.poll() is None, sender.communicate()
            assert time.monotonic() < deadline, "the first messages never arrived"
            time.sleep(0.02)  # the sender and Kannel, real processes
        down = time.monotonic()
        k.stop_smsbox()
        out, err = sender.communicate(timeout=CLI_TIMEOUT)
        assert sender.returncode == 0, (out, err)
        assert json.loads(out)["status"] == "paused"

        items = store_items(site.url, 1)
        written_off = (items["status"] == "error") & (items["error"] == "gateway_unavailable")
        assert not written_off.any()
        assert (items["status"] == "pending").sum() > 0  # the rest waits, tickets kept
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))  # smsbox stays down this long
        k.start_smsbox()
        resumed = site.popen("dispatch-due", "--json")
        _, problems = resumed.communicate(timeout=CLI_TIMEOUT)
        assert resumed.returncode == 0, problems
        items = store_items(site.url, 1)
        unknown = int((items["error"] == "outcome_unknown").sum())
        sent = int((items["status"] == "sent").sum())
        assert sent + unknown == 2 * USERS, items["status"].value_counts()
        assert unknown <= 16  # the requests in flight when smsbox went away
        got = k.wait_received(sent, timeout=60)
        time.sleep(1)  # anything Kannel still had queued reaches the fake SMSC now
        got = k.received()

    pairs = Counter((r.to, r.text) for r in got)
    assert max(pairs.values()) == 1, "a pair reached the SMSC twice"
    assert len(pairs) >= sent
    assert ledger_debits(site.url) == sent + unknown
