"""Sending windows at send time (#11): a dispatch stops at a chunk boundary when the
window closes — status ``paused``, tickets kept, nothing sent outside it — and
``dispatch-due`` resumes it when the window opens; every pair goes exactly once. The clock
is injected (#14): the tests jump to 09:00 tomorrow instead of waiting for it."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from clocks import Clock, jst
from support import add_users, mobile, outbox

from smsops.domain.windows import Window
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import dispatch, dispatch_due, due_ids

WINDOW = Window.parse("09:00-20:00")


def _keys(ctx: Context) -> Counter:
    return Counter(line["idempotency_key"] for line in outbox(ctx))


def test_a_delivery_due_after_the_close_pauses_until_the_opening_and_then_goes_once(settings):
    clock = Clock(jst(2026, 12, 1, 19), frozen=True)
    ctx = Context.open(settings, clock=clock)
    accounts.set_account(ctx, window="09:00-20:00")
    add_users(ctx, [mobile(i) for i in range(1, 21)])
    accounts.add_tickets(ctx, 40)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["一", "二"], at="2026-12-01 19:30"))
    clock.jump_to(jst(2026, 12, 1, 20, 30))  # dispatch-due did not run in time
    (paused,) = dispatch_due(ctx)
    assert (paused.status, paused.paused_for, paused.sent) == ("paused", "window_closed", 0)
    assert outbox(ctx) == []  # nothing at 20:30
    summary = dl.delivery_summary(ctx, created.delivery_id)
    assert summary.resume_at == "2026-12-02T09:00:00+09:00"
    assert summary.paused_reason == (
        "the sending window 09:00-20:00 (Asia/Tokyo) closed; 40 messages wait until it "
        "opens at 2026-12-02T09:00:00+09:00"
    )
    assert accounts.balance(ctx) == 0  # its tickets stay allocated to it
    clock.jump_to(jst(2026, 12, 2, 8, 59, 59))
    assert due_ids(ctx) == [] and dispatch_due(ctx) == []
    clock.jump_to(jst(2026, 12, 2, 9))
    (resumed,) = dispatch_due(ctx)
    assert (resumed.status, resumed.sent, resumed.resumed) == ("sent", 40, True)
    assert len(_keys(ctx)) == 40 and set(_keys(ctx).values()) == {1}
    assert "paused_reason" not in dl.delivery_summary(ctx, created.delivery_id).to_dict()
    ctx.close()


def test_a_running_dispatch_stops_at_the_chunk_that_would_pass_the_close(sqlite_settings):
    """At 10 messages/s with 3 s left, chunks are cut to what leaves before the close (with
    a second to spare); the rest waits for the opening, none sent after 20:00."""
    settings = sqlite_settings.model_copy(update={"rate_limit": 10.0, "chunk_size": 8})
    clock = Clock(jst(2026, 12, 1, 19, 59, 57))
    ctx = Context.open(settings, clock=clock)
    accounts.set_account(ctx, window="09:00-20:00")
    add_users(ctx, [mobile(i) for i in range(1, 31)])
    accounts.add_tickets(ctx, 60)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["一", "二"]))
    first = dispatch(ctx, created.delivery_id)
    assert first.status == "paused" and 0 < first.sent < 30
    close = jst(2026, 12, 1, 20)
    sent_before = outbox(ctx)
    assert all(
        clock.shift(datetime.fromisoformat(line["accepted_at"])) < close for line in sent_before
    )
    clock.jump_to(jst(2026, 12, 2, 9))
    (resumed,) = dispatch_due(ctx)
    assert resumed.status == "sent" and resumed.sent == 60
    assert len(_keys(ctx)) == 60 and set(_keys(ctx).values()) == {1}
    later = outbox(ctx)[len(sent_before) :]
    assert all(
        clock.shift(datetime.fromisoformat(line["accepted_at"])) >= jst(2026, 12, 2, 9)
        for line in later
    )
    assert accounts.balance(ctx) == 0
    ctx.close()


def test_a_delivery_outside_the_window_on_purpose_is_never_paused(sqlite_settings):
    clock = Clock(jst(2026, 12, 1, 19, 59, 59), frozen=True)
    ctx = Context.open(sqlite_settings.model_copy(update={"rate_limit": 1000.0}), clock=clock)
    accounts.set_account(ctx, window="09:00-20:00")
    add_users(ctx, [mobile(i) for i in range(1, 11)])
    accounts.add_tickets(ctx, 10)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["緊急"]), outside_window=True)
    clock.jump_to(jst(2026, 12, 1, 23))
    assert dispatch(ctx, created.delivery_id).status == "sent"
    assert dl.delivery_summary(ctx, created.delivery_id).outside_window is True
    ctx.close()


def test_window_pauses_do_not_stop_dispatch_due_from_sending_the_others(sqlite_settings):
    """A delivery paused by the window is no sign the gateway is down: the deliveries
    after it (say one made outside the window on purpose) still go."""
    clock = Clock(jst(2026, 12, 1, 19), frozen=True)
    ctx = Context.open(sqlite_settings, clock=clock)
    accounts.set_account(ctx, window="09:00-20:00")
    add_users(ctx, [mobile(i) for i in range(1, 6)])
    accounts.add_tickets(ctx, 10)
    dl.create_bulk(ctx, dl.preview_bulk(ctx, ["a"], at="2026-12-01 19:10"))
    urgent = dl.create_bulk(
        ctx, dl.preview_bulk(ctx, ["b"], at="2026-12-01 21:00"), outside_window=True
    )
    clock.jump_to(jst(2026, 12, 1, 21) + timedelta(seconds=1))
    results = {r.delivery_id: r.status for r in dispatch_due(ctx)}
    assert results == {1: "paused", urgent.delivery_id: "sent"}
    ctx.close()
