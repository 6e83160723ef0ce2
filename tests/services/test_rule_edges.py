"""Rule edges through the service layer (issue 18): each is a way around a rule that a
front door, a flow or a notebook could take."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from support import RefusingOutbox, add_users, e164, mobile, outbox

from smsops import clock
from smsops.errors import InputError, PlanError, ScheduleError, TicketError
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.dispatch import dispatch, dispatch_due
from smsops.store import read
from smsops.store.schema import ledger


def _with_failures(ctx, users: int = 4, spent: int = 2) -> int:
    """A sent bulk delivery to ``users`` numbers whose last ``spent`` failed for want of
    tickets (R10): another send took them between saving and sending."""
    add_users(ctx, [mobile(i) for i in range(1, users + 1)])
    accounts.add_tickets(ctx, users)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["冬のセール"]))
    for i in range(spent):
        dispatch(ctx, dl.send_individual(ctx, mobile(100 + i), ["個別"]).delivery_id)
    result = dispatch(ctx, created.delivery_id)
    assert (result.sent, result.errors) == (users - spent, spent)
    return created.delivery_id


def _debits(ctx) -> list[int]:
    with read(ctx.engine) as conn:
        return list(conn.execute(select(ledger.c.amount).where(ledger.c.kind == "debit")).scalars())


# --- R12: an empty send time is not "now" --------------------------------------------


@pytest.mark.parametrize("at", ["", "   "])
def test_r12_blank_at_is_refused_by_preview_and_resend(ctx, at):
    original = _with_failures(ctx)
    accounts.add_tickets(ctx, 10)
    before = dl.list_deliveries(ctx)
    with pytest.raises(ScheduleError, match="the send time is empty"):
        dl.preview_bulk(ctx, ["a"], at=at)
    with pytest.raises(ScheduleError, match="the send time is empty"):
        dl.resend_bulk(ctx, original, at=at)
    assert dl.list_deliveries(ctx) == before


def test_r12_a_send_time_past_year_9999_is_refused_by_preview(ctx):
    add_users(ctx, [mobile(1)])
    with pytest.raises(ScheduleError, match="too far ahead"):
        dl.preview_bulk(ctx, ["a"], at="9999-12-31T23:00Z")  # year 10000 in Tokyo


# --- R1 and R9: the individual resend is no back door ---------------------------------


@pytest.mark.parametrize("phone", [None, mobile(4)])
def test_r1_individual_resend_refused_below_standard(ctx, phone):
    original = _with_failures(ctx)
    accounts.add_tickets(ctx, 10)
    accounts.set_account(ctx, plan="free")
    before = dl.list_deliveries(ctx)
    with pytest.raises(PlanError, match="standard plan or above"):
        dl.resend_individual(ctx, original, phone=phone)
    assert dl.list_deliveries(ctx) == before
    assert accounts.balance(ctx) == 10
    # An individual send is not bulk SMS: its own failure may be resent on any plan.
    real = ctx.gateway_factory
    ctx.gateway_factory = lambda s: RefusingOutbox(s.outbox, lambda b: b["seq"] > 0)
    failed = dl.send_individual(ctx, mobile(7), ["個別"])
    assert dispatch(ctx, failed.delivery_id).status == "failed"
    ctx.gateway_factory = real
    (again,) = dl.resend_individual(ctx, failed.delivery_id)
    assert dispatch(ctx, again.delivery_id).status == "sent"


def test_r9_individual_resend_checks_the_whole_resend_and_saves_nothing(ctx):
    original = _with_failures(ctx, users=4, spent=2)  # numbers 3 and 4 failed
    accounts.add_tickets(ctx, 1)  # enough for either number alone, not for both
    before = dl.list_deliveries(ctx)
    with pytest.raises(TicketError) as err:
        dl.resend_individual(ctx, original)
    assert (err.value.details["needed"], err.value.details["balance"]) == (2, 1)
    assert dl.list_deliveries(ctx) == before
    accounts.add_tickets(ctx, 1)
    created = dl.resend_individual(ctx, original)
    assert [c.recipients for c in created] == [1, 1]
    for c in created:
        dispatch(ctx, c.delivery_id)
    repaired = [x["phone"] for x in outbox(ctx) if x["delivery_id"] > original]
    assert repaired[-2:] == [e164(3), e164(4)]


# --- R1 at send time: a downgrade stops due bulk deliveries ---------------------------


def test_r1_a_scheduled_bulk_delivery_is_not_sent_after_a_downgrade(ctx):
    add_users(ctx, [mobile(1), mobile(2)])
    accounts.add_tickets(ctx, 10)
    later = dl.create_bulk(
        ctx,
        dl.preview_bulk(ctx, ["a", "b"], at=(clock.now() + timedelta(minutes=5)).isoformat()),
    )
    accounts.set_account(ctx, plan="light")
    ctx.clock = lambda: clock.now() + timedelta(minutes=6)  # its time has come
    (result,) = dispatch_due(ctx)
    assert (result.delivery_id, result.status, result.sent, result.errors) == (
        later.delivery_id,
        "failed",
        0,
        4,
    )
    items = dl.delivery_items(ctx, later.delivery_id)
    assert set(items["error"]) == {"plan_below_standard"}
    assert outbox(ctx) == [] and _debits(ctx) == [] and accounts.balance(ctx) == 10
    assert dispatch_due(ctx) == []  # settled: not tried again and again
    # back on Standard, a resend repairs it
    accounts.set_account(ctx, plan="standard")
    repair = dl.resend_bulk(ctx, later.delivery_id)
    assert dispatch(ctx, repair.delivery_id).sent == 4


def test_r1_a_send_now_bulk_delivery_is_not_sent_after_a_downgrade(ctx):
    add_users(ctx, [mobile(1)])
    accounts.add_tickets(ctx, 10)
    queued = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["a"]))
    accounts.set_account(ctx, plan="free")
    result = dispatch(ctx, queued.delivery_id)
    assert (result.status, result.sent, result.tickets_used) == ("failed", 0, 0)
    assert outbox(ctx) == [] and accounts.balance(ctx) == 10
    # individual sends are not bulk SMS: they still go out on the free plan
    single = dl.send_individual(ctx, mobile(1), ["個別"])
    assert dispatch(ctx, single.delivery_id).status == "sent"


# --- R11: the balance has a ceiling, refused clearly ----------------------------------


def test_r11_a_purchase_past_the_largest_balance_is_refused_and_adds_nothing(ctx):
    accounts.add_tickets(ctx, accounts.MAX_BALANCE - 5)
    for count in (6, 2**63 - 1, 10**30):
        with pytest.raises(InputError, match="a balance holds at most 1,000,000,000"):
            accounts.add_tickets(ctx, count)
    assert accounts.balance(ctx) == accounts.MAX_BALANCE - 5
    assert accounts.add_tickets(ctx, 5) == accounts.MAX_BALANCE
