"""A full disk under the outbox (``RLIMIT_FSIZE``, the file-size limit ``ulimit -f`` sets,
hit for real by the sending process): the send stops with one clear line and exit 1, no
pair is recorded ``sent`` without its whole line on disk, and once there is room again
``dispatch-due`` finishes the delivery with every pair exactly once."""

from __future__ import annotations

import json
import resource

from sites import (
    CLI_TIMEOUT,
    keys_of,
    ledger_debits,
    message_args,
    outbox_keys,
    read_outbox,
    store_items,
)

USERS = 3_000  # x 2 messages: about 1.1 MB of outbox lines
ALREADY = 20 << 20  # the outbox already holds 20 MB (older deliveries)
ROOM = 300 << 10  # the sending process may write 300 KB more: it runs out mid-send


def test_a_full_disk_stops_the_send_and_records_nothing_unwritten(site_factory):
    site = site_factory(USERS, 2 * USERS, chunk_size=500)
    old = (
        json.dumps(
            {
                "delivery_id": 999,
                "phone": "+819000000000",
                "message_no": 1,
                "text": "x" * 100,
                "idempotency_key": "smsops-999-0-1",
                "accepted_at": "2026-01-01T00:00:00+00:00",
            }
        )
        + "\n"
    )
    site.outbox.write_text(old * (ALREADY // len(old)), encoding="utf-8")
    limit = site.outbox.stat().st_size + ROOM

    def cap_file_size() -> None:  # in the child, before exec: `ulimit -f`
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    sender = site.popen("bulk", "create", *message_args(), "--yes", preexec_fn=cap_file_size)
    out, err = sender.communicate(timeout=CLI_TIMEOUT)
    assert sender.returncode == 1, (out, err)
    assert "disk is full" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err

    items = store_items(site.url, 1)
    written = outbox_keys(site.outbox)
    sent = set(keys_of(1, items[items["status"] == "sent"]))
    assert sent, "nothing was sent before the disk filled up"
    assert sent <= set(written), f"{len(sent - set(written))} pairs 'sent' without a line"
    assert len(sent) < 2 * USERS  # the limit really was hit mid-send
    assert site.outbox.read_bytes().endswith(b"\n")  # no torn line left behind

    # Room again: dispatch-due (without the limit) finishes, every pair exactly once.
    resumed = site.popen("dispatch-due", "--json")
    _, problems = resumed.communicate(timeout=CLI_TIMEOUT)
    assert resumed.returncode == 0, problems
    records = [r for r in read_outbox(site.outbox) if r["delivery_id"] == 1]
    keys = outbox_keys(site.outbox)
    assert len(records) == 2 * USERS and all(keys[r["idempotency_key"]] == 1 for r in records)
    items = store_items(site.url, 1)
    assert items["status"].value_counts().to_dict() == {"sent": 2 * USERS}
    assert set(keys_of(1, items)) == {r["idempotency_key"] for r in records}
    assert ledger_debits(site.url) == 2 * USERS
