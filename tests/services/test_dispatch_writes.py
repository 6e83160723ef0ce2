"""Issue #12: dispatch writes each item at most twice after it is created — here once:
when its outcome is recorded — on SQLite and PostgreSQL. Taking a chunk claims a range
on the dispatcher's own row and writes no item; allocating tickets (R10) writes only the
pairs it leaves unfunded; the ticket mark goes with the outcome.

Every UPDATE of an item row is counted by a trigger the test installs in the real store.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text
from support import add_users, mobile

from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.dispatch import dispatch
from smsops.services.people import optout_add

SQLITE_TRIGGER = [
    "CREATE TABLE item_writes (delivery_id INTEGER, seq INTEGER, message_no INTEGER)",
    "CREATE TRIGGER count_item_writes AFTER UPDATE ON delivery_items BEGIN "
    "INSERT INTO item_writes VALUES (NEW.delivery_id, NEW.seq, NEW.message_no); END",
]
POSTGRES_TRIGGER = [
    "CREATE TABLE item_writes (delivery_id INTEGER, seq INTEGER, message_no INTEGER)",
    "CREATE FUNCTION count_item_write() RETURNS trigger AS $$ BEGIN "
    "INSERT INTO item_writes VALUES (NEW.delivery_id, NEW.seq, NEW.message_no); "
    "RETURN NEW; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER count_item_writes AFTER UPDATE ON delivery_items "
    "FOR EACH ROW EXECUTE FUNCTION count_item_write()",
]


def _count_item_writes(ctx) -> None:
    statements = POSTGRES_TRIGGER if ctx.engine.dialect.name == "postgresql" else SQLITE_TRIGGER
    with ctx.engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql))


def _writes(ctx, delivery_id: int) -> Counter[tuple[int, int]]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT seq, message_no FROM item_writes WHERE delivery_id = :d"),
            {"d": delivery_id},
        ).all()
    return Counter((r.seq, r.message_no) for r in rows)


def test_issue12_each_item_is_written_at_most_twice_by_dispatch(ctx):
    n = 60  # × 2 messages, in chunks of 7 (the test settings): many chunk boundaries
    add_users(ctx, [mobile(i) for i in range(n)])
    accounts.add_tickets(ctx, 2 * n)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["一通目", "二通目"]))
    for i in range(3):  # R10: the balance drops before it is sent
        dispatch(ctx, dl.send_individual(ctx, mobile(100 + i), ["個別"]).delivery_id)
    optout_add(ctx, mobile(5))  # R16 at send time: both its pairs leave
    _count_item_writes(ctx)

    result = dispatch(ctx, created.delivery_id)

    items = dl.delivery_items(ctx, created.delivery_id)
    # 118 pairs left after the opt-out, 117 tickets: one pair unfunded (R10)
    assert (result.sent, result.errors) == (117, 3)
    writes = _writes(ctx, created.delivery_id)
    assert set(writes) == set(zip(items["seq"], items["message_no"], strict=True))
    assert max(writes.values()) <= 2, [k for k, v in writes.items() if v > 2][:5]
    assert set(writes.values()) == {1}  # sent, opted out or unfunded: one write each
    with ctx.engine.connect() as conn:
        marked = dict(
            conn.execute(
                text(
                    "SELECT status, sum(CASE WHEN ticket THEN 1 ELSE 0 END) "
                    "FROM delivery_items WHERE delivery_id = :d GROUP BY status"
                ),
                {"d": created.delivery_id},
            ).all()
        )
    assert marked == {"sent": 117, "error": 0}  # a ticket on each pair sent, none refunded
