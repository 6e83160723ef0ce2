"""Sending windows (#11): the account's quiet hours refuse a send outside them at creation
(R12's way of refusing a time), unless the delivery goes outside on purpose."""

from __future__ import annotations

import pytest
from clocks import Clock, jst
from sqlalchemy import select
from support import RefusingOutbox, add_users, mobile, outbox

from smsops.errors import InputError, ScheduleError
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import send_if_due
from smsops.store import read
from smsops.store.schema import deliveries


@pytest.fixture
def night(settings):
    """An account with the window 09:00-20:00 (Tokyo), 10 users, and a clock at 22:00."""
    ctx = Context.open(settings, clock=Clock(jst(2026, 12, 1, 22), frozen=True))
    accounts.set_account(ctx, plan="standard", window="09:00-20:00")
    add_users(ctx, [mobile(i) for i in range(1, 11)])
    accounts.add_tickets(ctx, 100)
    yield ctx
    ctx.close()


def _count(ctx: Context) -> int:
    with read(ctx.engine) as conn:
        return len(conn.execute(select(deliveries.c.id)).all())


def test_window_is_set_normalized_shown_and_removed(ctx):
    assert "window" not in accounts.get_account(ctx).to_dict()
    assert accounts.set_account(ctx, window=" 9:00 - 20:00 ").window == "09:00-20:00"
    assert accounts.get_account(ctx).to_dict()["window"] == "09:00-20:00"
    with pytest.raises(InputError, match="--window: cannot read the sending window '9-20'"):
        accounts.set_account(ctx, window="9-20")
    assert accounts.get_account(ctx).window == "09:00-20:00"  # a refusal changes nothing
    assert accounts.set_account(ctx, window="off").window is None


def test_r12_send_now_outside_the_window_is_refused_naming_the_next_opening(night):
    p = dl.preview_bulk(night, ["セール"])
    with pytest.raises(ScheduleError) as refused:
        dl.create_bulk(night, p)
    assert str(refused.value) == (
        "R12: now (2026-12-01T22:00:00+09:00) is outside the sending window 09:00-20:00 "
        "(Asia/Tokyo); the next time it could go is 2026-12-02T09:00:00+09:00: give --at then, "
        "or --outside-window to send outside it on purpose"
    )
    assert _count(night) == 0 and accounts.balance(night) == 100  # nothing saved


def test_r12_a_time_scheduled_outside_the_window_is_refused_inside_it_is_saved(night):
    late = dl.preview_bulk(night, ["セール"], at="2026-12-02 20:30")
    with pytest.raises(ScheduleError, match="the send time 2026-12-02T20:30:00\\+09:00 is out"):
        dl.create_bulk(night, late)
    created = dl.create_bulk(night, dl.preview_bulk(night, ["セール"], at="2026-12-02 19:59"))
    assert created.status == "scheduled" and _count(night) == 1


def test_r12_outside_window_on_purpose_is_saved_and_sent(night):
    created = dl.create_bulk(night, dl.preview_bulk(night, ["緊急"]), outside_window=True)
    result = send_if_due(night, created)
    assert result.status == "sent" and len(outbox(night)) == 10


def test_r12_individual_sends_and_resends_keep_the_window_too(night):
    with pytest.raises(ScheduleError, match="outside the sending window"):
        dl.send_individual(night, mobile(1), ["ご注文の品を発送しました"])
    created = dl.send_individual(
        night, mobile(1), ["ご注文の品を発送しました"], outside_window=True
    )
    assert send_if_due(night, created).status == "sent"
    night.gateway_factory = lambda s: RefusingOutbox(s.outbox, lambda b: b["seq"] > 0)
    failed = dl.send_individual(night, mobile(2), ["発送しました"], outside_window=True)
    assert send_if_due(night, failed).status == "failed"
    with pytest.raises(ScheduleError, match="outside the sending window"):
        dl.resend_bulk(night, failed.delivery_id, at="2026-12-02 06:00")
    with pytest.raises(ScheduleError, match="outside the sending window"):
        dl.resend_individual(night, failed.delivery_id)


def test_the_window_follows_the_accounts_time_zone(night):
    accounts.set_account(night, timezone="Europe/London")  # 22:00 in Tokyo is 13:00 there
    created = dl.create_bulk(night, dl.preview_bulk(night, ["Sale"]))
    assert created.status == "queued"


def test_preview_estimates_the_last_message_at_the_rate_cap_and_warns(settings):
    """#11: the completion estimate — at 2 messages/s, 20 pairs take 10 s; from 19:59:55
    they do not fit before 20:00 and finish after 09:00; a delivery scheduled before the
    finish is named."""
    clock = Clock(jst(2026, 12, 1, 12), frozen=True)
    ctx = Context.open(settings.model_copy(update={"rate_limit": 2.0}), clock=clock)
    add_users(ctx, [mobile(i) for i in range(1, 11)])
    accounts.add_tickets(ctx, 100)
    plain = dl.preview_bulk(ctx, ["一", "二"]).to_dict()
    assert plain["finish_estimate"] == "2026-12-01T12:00:10+09:00" and plain["warnings"] == []
    accounts.set_account(ctx, window="09:00-20:00")
    dl.create_bulk(ctx, dl.preview_bulk(ctx, ["後"], at="2026-12-02 09:00:05"))
    clock.jump_to(jst(2026, 12, 1, 19, 59, 55))
    late = dl.preview_bulk(ctx, ["一", "二"]).to_dict()
    assert late["finish_estimate"] == "2026-12-02T09:00:06+09:00"  # 8 before 20:00, 12 after
    assert late["warnings"] == [
        "at 2 messages/s it does not fit in the sending window 09:00-20:00: it pauses at "
        "2026-12-01T20:00:00+09:00 and goes on at 2026-12-02T09:00:00+09:00",
        "the last message leaves after delivery 1 is due to start (2026-12-02T09:00:05+09:00)",
    ]
    night = dl.preview_bulk(ctx, ["一"], at="2026-12-01 22:00").to_dict()
    assert night["warnings"][0].startswith("R12: the send time 2026-12-01T22:00:00+09:00 is out")
    ctx.close()


def test_preview_without_a_rate_cap_has_no_estimate(ctx):
    add_users(ctx, [mobile(1)])
    d = dl.preview_bulk(ctx, ["一"]).to_dict()
    assert d["finish_estimate"] is None and d["rate_limit"] is None
