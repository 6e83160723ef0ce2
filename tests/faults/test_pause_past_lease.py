"""A sender paused past its lease (SIGSTOP: a VM pause, a long GC, a laptop lid) while a
successor takes its delivery over, then thawed (SIGCONT): it must find its claim gone and
hand over nothing more; the outbox never holds a key twice."""

from __future__ import annotations

import os
import signal
import time

from sites import (
    CLI_TIMEOUT,
    keys_of,
    ledger_debits,
    message_args,
    outbox_keys,
    store_items,
    wait_for_lines,
)

USERS = 6_000  # x 2 messages = 12,000 pairs: 3 s at 4,000/s


def test_sender_paused_past_its_lease_sends_nothing_twice(site_factory):
    site = site_factory(USERS, 2 * USERS, lease_seconds=3, rate_limit=4000, chunk_size=2000)
    sender = site.popen("bulk", "create", *message_args(), "--yes", "--json")
    wait_for_lines(sender, site.outbox, 1, "the sender")
    time.sleep(1.2)  # the sender (a real process) sends a while before it is frozen
    os.kill(sender.pid, signal.SIGSTOP)  # frozen mid-send, its lease runs out
    time.sleep(5)  # the database's clock judges leases: 3 s must really pass
    successor = site.popen("dispatch-due", "--json")
    time.sleep(2)  # the successor, a real process, takes the delivery over
    os.kill(sender.pid, signal.SIGCONT)  # wakes while the successor is sending
    out, err = sender.communicate(timeout=CLI_TIMEOUT)
    _, problems = successor.communicate(timeout=CLI_TIMEOUT)
    assert successor.returncode == 0, problems
    # The sender woke to find its claim gone: one clear line, no traceback.
    assert sender.returncode == 1, (out, err)
    assert "lost its claim" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err

    keys = outbox_keys(site.outbox)
    twice = {k: n for k, n in keys.items() if n > 1}
    assert not twice, f"{len(twice)} pairs written twice, e.g. {list(twice)[:3]}"
    items = store_items(site.url, 1)
    assert len(items) == 2 * USERS
    assert items["status"].value_counts().to_dict() == {"sent": 2 * USERS}
    assert set(keys) == set(keys_of(1, items))
    assert ledger_debits(site.url) == 2 * USERS  # debits = sent
