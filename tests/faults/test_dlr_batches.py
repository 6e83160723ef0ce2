"""Delivery reports recorded in batches (#12) by a real ``smsops receiver`` on loopback,
over real HTTP, on SQLite and PostgreSQL.

What must hold: many reports at once are each recorded exactly once, with what they said,
and each request is answered only after its report is committed (the store, read right
after each 200, already shows it); the same report again changes nothing; a refused
report leaves the rest of its batch recorded; and a store that fails during a batch — its
write lock held past SMSOPS_BUSY_TIMEOUT, or an error raised by the database in the middle
of the batch's statement — gets every request of the batch a 5xx and records none of
them, so Kannel sends each again (never a 200 for a report not stored).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import and_, select
from support import add_users, mobile

from smsops import clock
from smsops.receiver import Receiver
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import inbound
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.settings import Settings
from smsops.store import read
from smsops.store.schema import items

TOKEN = secrets.token_urlsafe(32)
AT = 1_796_083_200  # 2026-12-01 00:00 UTC, as Kannel's %T


@pytest.fixture
def rctx(settings: Settings) -> Iterator[Context]:
    ctx = Context.open(
        settings.model_copy(update={"receiver_token": SecretStr(TOKEN), "chunk_size": 1000})
    )
    yield ctx
    ctx.close()


def sent_delivery(ctx: Context, recipients: int) -> int:
    """A delivery of ``recipients`` × 2 messages, sent through the outbox."""
    add_users(ctx, [mobile(i) for i in range(1, recipients + 1)])
    accounts.add_tickets(ctx, 2 * recipients)
    delivery_id = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["セール", "詳細"])).delivery_id
    assert dispatch(ctx, delivery_id).sent == 2 * recipients
    return delivery_id


def reports(ctx: Context, delivery_id: int, pairs: list[tuple[int, int]], failed=()):
    """The queries Kannel calls smsops' dlr-url with for ``pairs`` (seq, message_no):
    delivered, or undeliverable for those in ``failed``."""
    inst = inbound.installation_id(ctx)
    return [
        {
            "token": TOKEN,
            "inst": inst,
            "key": f"smsops-{delivery_id}-{seq}-{no}",
            "status": "2" if (seq, no) in failed else "1",
            "at": str(AT + seq),
            "ref": f"ref-{seq}-{no}",
            "reason": f"id:{seq} stat:{'UNDELIV' if (seq, no) in failed else 'DELIVRD'} err:000",
        }
        for seq, no in pairs
    ]


def all_pairs(recipients: int) -> list[tuple[int, int]]:
    return [(seq, no) for seq in range(1, recipients + 1) for no in (1, 2)]


def row(ctx: Context, delivery_id: int, seq: int, no: int) -> tuple[object, ...]:
    this = and_(items.c.delivery_id == delivery_id, items.c.seq == seq, items.c.message_no == no)
    with read(ctx.engine) as conn:
        return tuple(
            conn.execute(
                select(items.c.dlr_status, items.c.dlr_at, items.c.dlr_reason).where(this)
            ).one()
        )


def statuses(ctx: Context, delivery_id: int) -> dict[tuple[int, int], object]:
    with read(ctx.engine) as conn:
        rows = conn.execute(
            select(items.c.seq, items.c.message_no, items.c.dlr_status).where(
                items.c.delivery_id == delivery_id
            )
        ).all()
    return {(r.seq, r.message_no): r.dlr_status for r in rows}


def fire(receiver: Receiver, queries: list[dict[str, str]], clients: int = 16) -> list[int]:
    """Every query as a GET /dlr from ``clients`` keep-alive connections at once; the
    answers' status codes, in the order of ``queries``."""
    answers: list[int] = [0] * len(queries)
    todo = iter(enumerate(queries))
    lock = threading.Lock()

    def client(_: int) -> None:
        with httpx.Client(base_url=receiver.url, timeout=60) as http:
            while True:
                with lock:
                    nxt = next(todo, None)
                if nxt is None:
                    return
                i, query = nxt
                answers[i] = http.get("/dlr", params=query).status_code

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return answers


def test_2000_reports_from_16_clients_are_each_recorded_once_and_answered_after_commit(rctx):
    delivery_id = sent_delivery(rctx, 1000)
    pairs = all_pairs(1000)
    failed = {(seq, no) for seq, no in pairs if seq % 10 == 0}  # undeliverable
    wanted = {p: "undeliverable" if p in failed else "delivered" for p in pairs}
    # 200 of them twice in a row (Kannel retrying while the first try runs): most land
    # in the same batch as their twin.
    queries = [
        q
        for i, q in enumerate(reports(rctx, delivery_id, pairs, failed))
        for _ in range(2 if i < 400 and i % 2 == 0 else 1)
    ]
    assert len(queries) == 2200
    seen_late: list[str] = []
    answers: list[int] = []
    todo = iter(queries)
    lock = threading.Lock()

    with Receiver(rctx) as receiver:

        def client(_: int) -> None:
            with httpx.Client(base_url=receiver.url, timeout=60) as http:
                while True:
                    with lock:
                        query = next(todo, None)
                    if query is None:
                        return
                    code = http.get("/dlr", params=query).status_code
                    seq, no = (int(x) for x in query["key"].split("-")[2:])
                    # Answered: the store must show it already (committed, not queued).
                    if code == 200 and row(rctx, delivery_id, seq, no)[0] != wanted[seq, no]:
                        seen_late.append(query["key"])
                    with lock:
                        answers.append(code)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(client, range(16)))
        stats = receiver.server.batcher.stats

    assert answers == [200] * len(queries)
    assert seen_late == []
    assert statuses(rctx, delivery_id) == wanted  # every pair once, as its report said
    assert stats.reports == len(queries) and stats.failed_batches == 0
    assert stats.largest > 1 and stats.batches < len(queries)  # batched, not one by one
    status, at, reason = row(rctx, delivery_id, 30, 2)
    assert (status, clock.from_store(at), reason) == (
        "undeliverable",
        datetime.fromtimestamp(AT + 30, UTC),
        "stat:UNDELIV err:000",  # the receipt's state and error code
    )


def test_the_same_reports_again_change_nothing_and_a_refused_one_spares_its_batch(rctx):
    delivery_id = sent_delivery(rctx, 20)
    queries = reports(rctx, delivery_id, all_pairs(20))
    with Receiver(rctx, linger=0.5) as receiver:  # 0.5 s: one batch per volley
        assert fire(receiver, queries[:30]) == [200] * 30
        before = [row(rctx, delivery_id, seq, no) for seq in range(1, 21) for no in (1, 2)]
        # Repeats (a later time, another receipt), an unknown key, another installation's
        # and another message's ref, in the same batch as ten new reports.
        repeats = [{**q, "at": str(AT + 9999), "reason": "again"} for q in queries[:10]]
        odd = [
            *reports(rctx, delivery_id, [(999, 1)]),  # no such message: 404
            {**queries[30], "inst": "another"},  # 409
        ]
        answers = fire(receiver, repeats + odd + queries[31:], clients=16)
        assert answers == [200] * 10 + [404, 409] + [200] * 9
        assert receiver.server.batcher.stats.largest >= 8  # they shared batches
    after = [row(rctx, delivery_id, seq, no) for seq in range(1, 21) for no in (1, 2)]
    assert after[:30] == before[:30]  # the repeats changed nothing, not even the time
    assert [r[0] for r in after[30:]] == [None] + ["delivered"] * 9  # 409: not recorded


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_write_lock_held_past_the_busy_timeout_fails_every_report_of_the_batch(rctx):
    ctx = Context.open(rctx.settings.model_copy(update={"busy_timeout": 0.5}))
    delivery_id = sent_delivery(ctx, 8)
    queries = reports(ctx, delivery_id, all_pairs(8))
    path = ctx.settings.database_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        with Receiver(ctx, linger=0.2) as receiver:
            holder.execute("BEGIN IMMEDIATE")  # another process's writer, stuck
            answers = fire(receiver, queries)
            stats = receiver.server.batcher.stats
            assert answers == [503] * 16  # "store unavailable": Kannel sends them again
            assert stats.failed_batches == stats.batches and stats.largest > 1
            holder.execute("ROLLBACK")
            assert set(statuses(ctx, delivery_id).values()) == {None}  # none recorded
            # Kannel's retries, once the lock is gone, are all recorded.
            assert fire(receiver, queries) == [200] * 16
        assert set(statuses(ctx, delivery_id).values()) == {"delivered"}
    finally:
        holder.close()
        ctx.close()


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_database_error_in_the_middle_of_a_batch_fails_all_of_it(rctx):
    delivery_id = sent_delivery(rctx, 8)
    queries = reports(rctx, delivery_id, all_pairs(8))
    path = rctx.settings.database_url.removeprefix("sqlite:///")

    def sql(statement: str) -> None:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute(statement)
        finally:
            db.close()

    # The database refuses one row's change in the middle of the batch's statement, after
    # it changed the rows before it in the same transaction.
    sql(
        "CREATE TRIGGER poisoned BEFORE UPDATE OF dlr_status ON delivery_items "
        "WHEN NEW.seq = 5 AND NEW.message_no = 2 BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    # Up to 2 s to gather: all 16 in one batch.
    with Receiver(rctx, linger=2.0, max_batch=16) as receiver:
        assert fire(receiver, queries) == [500] * 16
        assert receiver.server.batcher.stats.batches == 1
        assert set(statuses(rctx, delivery_id).values()) == {None}  # rolled back, all
        sql("DROP TRIGGER poisoned")
        assert fire(receiver, queries) == [200] * 16
    assert set(statuses(rctx, delivery_id).values()) == {"delivered"}
