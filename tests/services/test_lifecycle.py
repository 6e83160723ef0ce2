"""The delivery lifecycle through the service layer, rule by rule (R1–R16)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from clocks import Clock, jst
from sqlalchemy import select
from support import RefusingOutbox, add_users, e164, mobile, outbox

from smsops.errors import (
    ConfigError,
    InputError,
    MessageError,
    NoRecipientsError,
    NotFoundError,
    PlanError,
    RuleError,
    ScheduleError,
    SmsopsError,
    StateError,
    TicketError,
)
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import people
from smsops.services.context import Context
from smsops.services.dispatch import dispatch, dispatch_due
from smsops.store import read
from smsops.store.schema import ledger

MSGS = ["冬のセール開始！", "詳細はWebで"]


def create(ctx, messages=MSGS, at=None, **kw) -> dl.Created:
    return dl.create_bulk(ctx, dl.preview_bulk(ctx, messages, at=at, **kw))


def send_now(ctx, messages=MSGS, **kw):
    created = create(ctx, messages, **kw)
    return created, dispatch(ctx, created.delivery_id)


def in_seconds(ctx: Context, s: float) -> str:
    return (ctx.clock() + timedelta(seconds=s)).isoformat()


# Scheduled tests run on a test clock (#14) that starts at 09:00 Tokyo and is moved to the
# send time of 10:00 instead of being waited for.
AT_TEN = "2099-12-01 10:00"  # in the account's zone, Asia/Tokyo
TEN = jst(2099, 12, 1, 10)


@pytest.fixture
def clock(ctx: Context) -> Clock:
    """``ctx``'s clock, at 09:00 Tokyo on the day of :data:`AT_TEN` until the test moves it."""
    ctx.clock = Clock(jst(2099, 12, 1, 9))
    return ctx.clock


@pytest.mark.parametrize("plan", ["free", "light"])
def test_r1_lower_plans_are_refused_naming_the_plan_and_nothing_is_saved(ctx, plan):
    add_users(ctx, [mobile(1)])
    accounts.add_tickets(ctx, 10)
    accounts.set_account(ctx, plan=plan)
    with pytest.raises(PlanError, match="standard plan or above") as err:
        create(ctx)
    assert err.value.details["required"] == "standard"
    assert dl.list_deliveries(ctx) == []
    assert accounts.balance(ctx) == 10


@pytest.mark.parametrize("plan", ["standard", "premium"])
def test_r1_standard_and_above_may_send_in_bulk(ctx, plan):
    add_users(ctx, [mobile(1)])
    accounts.add_tickets(ctx, 10)
    accounts.set_account(ctx, plan=plan)
    _, result = send_now(ctx)
    assert result.status == "sent"


def test_r2_phone_field_disabled_means_zero_recipients_explained(ctx):
    add_users(ctx, [mobile(1), mobile(2)])
    accounts.add_tickets(ctx, 10)
    accounts.set_account(ctx, phone_field=False)
    preview = dl.preview_bulk(ctx, MSGS)
    assert preview.recipients == 0
    assert preview.excluded == {"phone_field_disabled": 2}
    with pytest.raises(NoRecipientsError, match="phone field is disabled"):
        dl.create_bulk(ctx, preview)


def test_r4_zero_recipients_refused_with_counts_per_reason(ctx):
    add_users(ctx, [None, "", "03-1234-5678", "0120-123-456", "abc"])
    accounts.add_tickets(ctx, 10)
    with pytest.raises(NoRecipientsError) as err:
        create(ctx)
    text = str(err.value)
    assert "0 recipients from 5 users" in text
    assert "2 users have no phone number" in text
    assert "2 users have numbers that are not Japanese mobiles" in text
    assert err.value.details["excluded"] == {"no_phone": 2, "malformed": 1, "not_mobile": 2}
    assert dl.list_deliveries(ctx) == []


def test_r5_bulk_sends_a_shared_number_once_to_the_first_user(ctx):
    add_users(ctx, [mobile(1), mobile(2), "+81 90 1000 0001", "09010000001"])
    accounts.add_tickets(ctx, 100)
    created, _ = send_now(ctx, ["one"])
    assert created.recipients == 2
    assert [line["phone"] for line in outbox(ctx)] == [e164(1), e164(2)]
    items = dl.delivery_items(ctx, created.delivery_id)
    assert items["user_id"].tolist() == ["u1", "u2"]


def test_r5_individual_sends_are_never_deduplicated(ctx):
    accounts.add_tickets(ctx, 10)
    for _ in range(2):
        created = dl.send_individual(ctx, mobile(1), ["あなたへのお知らせ"])
        dispatch(ctx, created.delivery_id)
    add_users(ctx, [mobile(1)])
    send_now(ctx, ["bulk"])  # a bulk delivery is not deduplicated against them either
    assert [line["phone"] for line in outbox(ctx)] == [e164(1)] * 3


def test_r6_r7_bad_messages_are_refused_and_nothing_is_saved(ctx):
    add_users(ctx, [mobile(1)])
    accounts.add_tickets(ctx, 10)
    with pytest.raises(MessageError, match="message 2 is 71 characters"):
        create(ctx, ["ok", "あ" * 71])
    with pytest.raises(MessageError, match="R7"):
        create(ctx, ["%name%様"])
    with pytest.raises(MessageError, match="1 or 2 messages"):
        create(ctx, ["a", "b", "c"])
    with pytest.raises(MessageError, match="R7"):
        dl.send_individual(ctx, mobile(1), ["%name%"])
    assert dl.list_deliveries(ctx) == []


def test_r8_r9_creation_needs_recipients_times_messages_tickets(ctx):
    add_users(ctx, [mobile(i) for i in range(1, 11)])
    accounts.add_tickets(ctx, 19)
    with pytest.raises(TicketError) as err:
        create(ctx)  # 10 × 2 = 20 needed
    assert err.value.details == {"rule": "R9", "needed": 20, "balance": 19, "shortfall": 1}
    assert "needed 20, balance 19, shortfall 1" in str(err.value)
    with pytest.raises(TicketError):  # scheduled deliveries are checked too
        create(ctx, at=in_seconds(ctx, 3600))
    assert dl.list_deliveries(ctx) == []
    accounts.add_tickets(ctx, 1)
    assert create(ctx, at=in_seconds(ctx, 3600)).tickets_needed == 20
    assert accounts.balance(ctx) == 20  # a scheduled delivery reserves nothing (R10)


def test_r10_scheduled_delivery_sends_in_order_when_the_balance_dropped(ctx, clock):
    """The source's example: 10 recipients × 2 messages need 20 tickets; with 15 left at
    send time, 1–7 get both, 8 gets message 1 only, 9–10 get nothing."""
    add_users(ctx, [mobile(i) for i in range(1, 11)])
    accounts.add_tickets(ctx, 20)
    created = create(ctx, at=AT_TEN)
    assert created.status == "scheduled"
    for i in range(5):  # the balance drops before the scheduled time
        dispatch(ctx, dl.send_individual(ctx, mobile(100 + i), ["個別"]).delivery_id)
    assert accounts.balance(ctx) == 15
    clock.jump_to(TEN - timedelta(seconds=1))
    assert dispatch_due(ctx) == []  # not yet due (R12)
    clock.jump_to(TEN)
    (result,) = dispatch_due(ctx)
    assert (result.delivery_id, result.sent, result.errors) == (created.delivery_id, 15, 5)
    assert result.status == "partially_sent"
    items = dl.delivery_items(ctx, created.delivery_id)
    sent = items[items["status"] == "sent"]
    assert sent.groupby("seq")["message_no"].apply(list).to_dict() == {
        **{s: [1, 2] for s in range(1, 8)},
        8: [1],
    }
    errors = items[items["status"] == "error"]
    assert list(zip(errors["seq"], errors["message_no"], errors["error"], strict=True)) == [
        (8, 2, "insufficient_tickets"),
        (9, 1, "insufficient_tickets"),
        (9, 2, "insufficient_tickets"),
        (10, 1, "insufficient_tickets"),
        (10, 2, "insufficient_tickets"),
    ]
    assert accounts.balance(ctx) == 0
    # the outbox got recipient by recipient, message 1 then message 2
    mine = [
        (x["phone"], x["message_no"])
        for x in outbox(ctx)
        if x["delivery_id"] == created.delivery_id
    ]
    assert mine == [(e164(s), m) for s in range(1, 8) for m in (1, 2)] + [(e164(8), 1)]


def test_r11_ledger_records_every_movement_and_balance_is_its_sum(ctx):
    add_users(ctx, [mobile(i) for i in range(1, 4)])
    accounts.add_tickets(ctx, 10)
    send_now(ctx)
    with read(ctx.engine) as conn:
        rows = conn.execute(select(ledger.c.kind, ledger.c.amount).order_by(ledger.c.id)).all()
    assert [tuple(r) for r in rows] == [("purchase", 10), ("debit", -6)]
    assert accounts.balance(ctx) == sum(r.amount for r in rows) == 4


def test_r11_gateway_rejections_are_refunded(ctx):
    add_users(ctx, [mobile(1), mobile(2)])
    accounts.add_tickets(ctx, 4)
    ctx.gateway_factory = lambda s: RefusingOutbox(s.outbox, lambda b: b["seq"] > 0)
    _, result = send_now(ctx)
    assert (result.status, result.sent, result.errors, result.tickets_used) == ("failed", 0, 4, 0)
    assert accounts.balance(ctx) == 4


def test_r12_a_gateway_this_process_cannot_use_refuses_a_send_now_and_saves_nothing(ctx, clock):
    add_users(ctx, [mobile(1), mobile(2)])
    accounts.add_tickets(ctx, 10)
    # Kannel chosen, its credentials forgotten: the real gateway refuses to start.
    broken = Context.open(
        ctx.settings.model_copy(update={"gateway": "kannel", "kannel_user": None}), clock=clock
    )
    try:
        with pytest.raises(ConfigError, match="SMSOPS_KANNEL_USER"):
            create(broken)
        with pytest.raises(ConfigError, match="SMSOPS_KANNEL_USER"):
            dl.send_individual(broken, mobile(3), ["hi"])
        assert dl.list_deliveries(ctx) == [] and accounts.balance(ctx) == 10
        # A scheduled delivery is sent later, by whichever process dispatches it.
        later = create(broken, at=AT_TEN)
        clock.jump_to(TEN)
        with pytest.raises(ConfigError):
            dispatch_due(broken)
        assert dl.delivery_summary(ctx, later.delivery_id).status == "scheduled"
        assert accounts.balance(ctx) == 10  # nothing allocated, nothing claimed
        assert [r.status for r in dispatch_due(ctx)] == ["sent"]
    finally:
        broken.close()


def test_r12_past_time_refused_naive_times_are_in_the_account_zone(ctx):
    add_users(ctx, [mobile(1)])
    accounts.add_tickets(ctx, 10)
    with pytest.raises(ScheduleError, match="in the past"):
        create(ctx, at="2020-01-01 10:00")
    with pytest.raises(ScheduleError, match="ISO 8601"):
        create(ctx, at="next tuesday")
    created = create(ctx, at="2099-12-01 10:00")
    assert created.scheduled_at == "2099-12-01T10:00:00+09:00"
    accounts.set_account(ctx, timezone="UTC")
    assert dl.list_deliveries(ctx)[0].scheduled_at == "2099-12-01T01:00:00+00:00"


def test_r12_a_scheduled_delivery_can_be_cancelled_before_it_starts(ctx, clock):
    add_users(ctx, [mobile(1)])
    accounts.add_tickets(ctx, 10)
    created = create(ctx, at=AT_TEN)
    dl.cancel(ctx, created.delivery_id)
    clock.jump_to(TEN)
    assert dispatch_due(ctx) == []
    assert outbox(ctx) == []
    items = dl.delivery_items(ctx, created.delivery_id)
    assert set(items["status"]) == {"cancelled"}
    assert accounts.balance(ctx) == 10
    with pytest.raises(StateError, match="cancelled"):
        dl.cancel(ctx, created.delivery_id)
    _, result = send_now(ctx)
    with pytest.raises(StateError, match="only a delivery that has not started"):
        dl.cancel(ctx, result.delivery_id)


def test_r13_preview_shows_everything_and_saves_nothing(ctx):
    add_users(ctx, [mobile(1), mobile(2), None])
    accounts.add_tickets(ctx, 3)
    p = dl.preview_bulk(ctx, MSGS, at="2099-01-01T09:00")
    d = p.to_dict()
    assert {
        k: d[k]
        for k in ("recipients", "messages", "tickets_needed", "balance", "scheduled_at", "excluded")
    } == {
        "recipients": 2,
        "messages": 2,
        "tickets_needed": 4,
        "balance": 3,
        "scheduled_at": "2099-01-01T09:00:00+09:00",
        "excluded": {"no_phone": 1},
    }
    assert d["shortfall"] == 1
    assert d["sample"] == ["090-****-0001", "090-****-0002"]
    assert [t["length"] for t in d["texts"]] == [8, 7]
    assert dl.list_deliveries(ctx) == []
    assert accounts.balance(ctx) == 3


def test_r14_history_lists_deliveries_newest_first_with_counts(ctx):
    add_users(ctx, [mobile(1), mobile(2), mobile(3)])
    accounts.add_tickets(ctx, 6)
    first, _ = send_now(ctx, ["one"])
    second = create(ctx, ["two"], at=in_seconds(ctx, 3600))
    rows = dl.list_deliveries(ctx)
    assert [r.id for r in rows] == [second.delivery_id, first.delivery_id]
    assert {
        k: rows[1].to_dict()[k]
        for k in ("kind", "status", "recipients", "sent", "errors", "tickets_used", "resend_of")
    } == {
        "kind": "bulk",
        "status": "sent",
        "recipients": 3,
        "sent": 3,
        "errors": 0,
        "tickets_used": 3,
        "resend_of": None,
    }
    assert rows[0].status == "scheduled" and rows[0].sent == 0
    items = dl.delivery_items(ctx, first.delivery_id)
    assert items[["seq", "phone", "message_no", "status"]].values.tolist() == [
        [1, e164(1), 1, "sent"],
        [2, e164(2), 1, "sent"],
        [3, e164(3), 1, "sent"],
    ]
    with pytest.raises(SmsopsError, match="no delivery 99"):
        dl.delivery_items(ctx, 99)


def _r10_example(ctx, clock: Clock) -> int:
    """R10's example sent at 10:00: recipient 8's message 2 and 9–10 failed; the clock
    reads 10:00 afterwards."""
    add_users(ctx, [mobile(i) for i in range(1, 11)])
    accounts.add_tickets(ctx, 20)
    created = create(ctx, at=AT_TEN)
    dispatch(ctx, dl.send_individual(ctx, mobile(500), ["x"]).delivery_id)
    for i in range(4):
        dispatch(ctx, dl.send_individual(ctx, mobile(501 + i), ["x"]).delivery_id)
    clock.jump_to(TEN)
    (result,) = dispatch_due(ctx)
    assert (result.delivery_id, result.sent, result.errors) == (created.delivery_id, 15, 5)
    return created.delivery_id


def test_r15_bulk_resend_sends_exactly_the_failed_pairs_and_links_back(ctx, clock):
    original = _r10_example(ctx, clock)
    with pytest.raises(TicketError):  # R9 again: 5 needed, balance 0
        dl.resend_bulk(ctx, original)
    accounts.add_tickets(ctx, 5)
    created = dl.resend_bulk(ctx, original)
    result = dispatch(ctx, created.delivery_id)
    assert (result.sent, result.errors) == (5, 0)
    row = dl.list_deliveries(ctx)[0]
    assert (row.kind, row.resend_of, row.recipients) == ("resend", original, 3)
    lines = [
        (x["phone"], x["message_no"], x["text"])
        for x in outbox(ctx)
        if x["delivery_id"] == created.delivery_id
    ]
    assert lines == [
        (e164(8), 2, MSGS[1]),
        (e164(9), 1, MSGS[0]),
        (e164(9), 2, MSGS[1]),
        (e164(10), 1, MSGS[0]),
        (e164(10), 2, MSGS[1]),
    ]
    with pytest.raises(StateError, match="no failed messages"):
        dl.resend_bulk(ctx, created.delivery_id)


def test_r15_individual_resend_one_number_at_a_time(ctx, clock):
    original = _r10_example(ctx, clock)
    accounts.add_tickets(ctx, 5)
    (only,) = dl.resend_individual(ctx, original, phone="090-1000-0009")
    dispatch(ctx, only.delivery_id)
    rest = dl.resend_individual(ctx, original)  # 9 is repaired: only 8 and 10 are left
    assert [c.recipients for c in rest] == [1, 1]
    for c in rest:
        dispatch(ctx, c.delivery_id)
    kinds = {(r.kind, r.resend_of) for r in dl.list_deliveries(ctx)[:3]}
    assert kinds == {("individual", original)}


def test_r16_opted_out_numbers_are_skipped_in_bulk_and_refused_individually(ctx):
    add_users(ctx, [mobile(1), mobile(2)])
    accounts.add_tickets(ctx, 10)
    people.optout_add(ctx, "０９０－１０００－０００１")
    p = dl.preview_bulk(ctx, ["hi"])
    assert (p.recipients, p.excluded) == (1, {"opted_out": 1})
    with pytest.raises(RuleError, match="R16"):
        dl.send_individual(ctx, "+81 90 1000 0001", ["hi"])


def test_r16_an_opt_out_after_scheduling_is_honoured_at_send_time(ctx, clock):
    add_users(ctx, [mobile(1), mobile(2)])
    accounts.add_tickets(ctx, 10)
    created = create(ctx, ["hi"], at=AT_TEN)
    people.optout_add(ctx, mobile(2), source="reply")
    clock.jump_to(TEN)
    (result,) = dispatch_due(ctx)
    assert (result.sent, result.errors) == (1, 1)
    items = dl.delivery_items(ctx, created.delivery_id)
    assert items.loc[items["seq"] == 2, "error"].item() == "opted_out"
    assert accounts.balance(ctx) == 9  # no ticket for the opted-out number
    accounts.add_tickets(ctx, 5)
    with pytest.raises(StateError, match="no failed messages"):
        dl.resend_bulk(ctx, created.delivery_id)  # never resent to an opted-out number


def test_r16_optout_remove(ctx):
    people.optout_add(ctx, mobile(1))
    assert people.optout_remove(ctx, "+819010000001").optouts_total == 0
    with pytest.raises(NotFoundError, match="not on the opt-out list"):
        people.optout_remove(ctx, mobile(1))


def test_r3_individual_send_to_a_landline_is_refused(ctx):
    accounts.add_tickets(ctx, 10)
    with pytest.raises(RuleError, match=r"R3.*not_mobile"):
        dl.send_individual(ctx, "03-1234-5678", ["hi"])


def test_users_upsert_keeps_registration_order_and_updates_in_place(ctx):
    add_users(ctx, [mobile(1), mobile(2), mobile(3)])
    people.upsert_users(
        ctx, pd.DataFrame({"user_id": ["u4", "u2"], "phone": [mobile(4), mobile(22)]})
    )
    users = people.load_users(ctx)
    assert users["user_id"].tolist() == ["u1", "u2", "u3", "u4"]
    assert users["phone"].tolist() == [mobile(1), mobile(22), mobile(3), mobile(4)]


def test_r2_large_imports_keep_file_order_across_batches(ctx, monkeypatch):
    # Ids in no sorted order and batches of 700: the order of registration is the order
    # of the file, across batches, on both stores (PostgreSQL goes through COPY).
    monkeypatch.setattr(ctx.settings, "write_batch", 700)  # settings.write_batch (#12)
    rng = np.random.default_rng(7)
    ids = [f"id{v}" for v in rng.permutation(5_000)]
    first = pd.DataFrame({"user_id": ids[:3_000], "phone": [mobile(i) for i in range(3_000)]})
    first["name"] = "初回"
    assert people.upsert_users(ctx, first).users_total == 3_000
    second = pd.DataFrame(
        {"user_id": ids[2_000:], "phone": [mobile(10_000 + i) for i in range(3_000)]}
    )
    second["name"] = "二回目"
    assert people.upsert_users(ctx, second).users_total == 5_000

    stored = people.load_users(ctx, with_attrs=True)
    assert stored["user_id"].tolist() == ids
    expected = [mobile(i) for i in range(2_000)] + [mobile(10_000 + i) for i in range(3_000)]
    assert stored["phone"].tolist() == expected
    assert stored["name"].tolist() == ["初回"] * 2_000 + ["二回目"] * 3_000


def test_query_selects_users_by_their_other_columns(ctx):
    add_users(ctx, [mobile(1), mobile(2), mobile(3)])
    assert dl.preview_bulk(ctx, ["hi"], query="name == '山田2'").recipients == 1
    with pytest.raises(InputError, match="--query"):
        dl.preview_bulk(ctx, ["hi"], query="no_such_column > 1")


def test_r4_zero_recipients_says_the_query_or_the_file_picked_no_one(ctx, tmp_path):
    add_users(ctx, [mobile(1), mobile(2), "03-1234-5678"])
    nobody = dl.preview_bulk(ctx, ["hi"], query="name == 'nobody'")
    assert nobody.recipients == 0
    assert nobody.diagnosis == "0 recipients: --query \"name == 'nobody'\" picks 0 of the 3 users"
    some = dl.preview_bulk(ctx, ["hi"], query="name != '山田2'")
    assert some.diagnosis.startswith("--query \"name != '山田2'\" picks 2 of the 3 users; ")
    assert some.diagnosis.endswith(
        "1 recipient from 2 users: 1 user has a number that is not a Japanese mobile "
        "(landline, toll-free, IP phone, unallocated or foreign)"
    )
    with pytest.raises(NoRecipientsError, match="picks 0 of the 3 users"):
        dl.create_bulk(ctx, nobody)

    header_only = tmp_path / "empty.csv"
    header_only.write_text("user_id,phone\n", encoding="utf-8")
    empty = dl.preview_bulk(ctx, ["hi"], users_files=[header_only])
    assert (empty.recipients, empty.diagnosis) == (
        0,
        "0 recipients: the user file has no rows (empty.csv)",
    )


def test_dispatch_refuses_a_delivery_that_is_not_due(ctx):
    add_users(ctx, [mobile(1)])
    accounts.add_tickets(ctx, 10)
    created = create(ctx, at=in_seconds(ctx, 3600))
    with pytest.raises(StateError, match="scheduled for later"):
        dispatch(ctx, created.delivery_id)


def test_r15_resending_twice_never_sends_a_pair_twice(ctx, clock):
    original = _r10_example(ctx, clock)
    accounts.add_tickets(ctx, 10)
    first = dl.resend_bulk(ctx, original)
    dispatch(ctx, first.delivery_id)
    with pytest.raises(StateError, match="no failed messages"):
        dl.resend_bulk(ctx, original)  # all repaired already
    with pytest.raises(StateError, match="no failed messages"):
        dl.resend_individual(ctx, original)
    assert accounts.balance(ctx) == 5


def test_r15_a_resend_of_a_resend_repairs_the_original_too(ctx, clock):
    original = _r10_example(ctx, clock)  # 5 pairs failed: seq 8 message 2, seq 9-10 both
    accounts.add_tickets(ctx, 5)
    first = dl.resend_bulk(ctx, original, at="2099-12-01 11:00")
    dispatch(ctx, dl.send_individual(ctx, mobile(600), ["x", "y"]).delivery_id)
    assert dispatch_due(ctx) == []  # 10:00, the resend is for 11:00
    clock.jump_to(TEN + timedelta(hours=1))
    assert [(r.sent, r.errors) for r in dispatch_due(ctx)] == [(3, 2)]  # seq 10 fails again
    accounts.add_tickets(ctx, 2)
    second = dl.resend_bulk(ctx, first.delivery_id)  # seq 10's two messages, at last
    assert dispatch(ctx, second.delivery_id).sent == 2
    accounts.add_tickets(ctx, 10)
    with pytest.raises(StateError, match="no failed messages"):
        dl.resend_bulk(ctx, original)
    with pytest.raises(StateError, match="no failed messages"):
        dl.resend_individual(ctx, original)
    sent = Counter((x["phone"], x["message_no"]) for x in outbox(ctx))
    assert max(sent.values()) == 1 and accounts.balance(ctx) == 10


def test_r15_a_scheduled_resend_counts_as_on_its_way(ctx, clock):
    original = _r10_example(ctx, clock)
    accounts.add_tickets(ctx, 10)
    dl.resend_bulk(ctx, original, at=in_seconds(ctx, 3600))
    with pytest.raises(StateError, match="no failed messages"):
        dl.resend_bulk(ctx, original)


def test_r10_waiting_demand_lists_what_will_compete_for_the_balance(ctx):
    add_users(ctx, [mobile(i) for i in range(1, 4)])
    accounts.add_tickets(ctx, 20)
    later = create(ctx, at=in_seconds(ctx, 7200))
    sooner = create(ctx, ["one"], at=in_seconds(ctx, 3600))
    demand = dl.waiting_demand(ctx)
    assert demand[["id", "tickets"]].values.tolist() == [
        [sooner.delivery_id, 3],
        [later.delivery_id, 6],
    ]
    assert demand["due"].iloc[0] < demand["due"].iloc[1]
    dl.cancel(ctx, sooner.delivery_id)
    assert dl.waiting_demand(ctx)["id"].tolist() == [later.delivery_id]
