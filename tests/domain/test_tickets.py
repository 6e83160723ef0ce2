"""R8, R10: one ticket per message per recipient; send in order until tickets run out."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smsops import allocate_tickets, tickets_needed
from smsops.domain.schemas import SendPlan
from smsops.domain.tickets import allocate_plan


def test_r8_tickets_needed_is_recipients_times_messages():
    assert tickets_needed(10, 2) == 20
    assert tickets_needed(7, 1) == 7
    assert len(allocate_tickets(10, 2, 100)) == 20


def test_r10_source_example_10_recipients_2_messages_15_tickets():
    plan = allocate_tickets(10, 2, 15)
    SendPlan.validate(plan)
    sent = plan[plan["status"] == "sent"]
    both = sent.groupby("seq")["message_no"].apply(list)
    assert all(both.loc[s] == [1, 2] for s in range(1, 8))  # recipients 1-7 get both
    assert both.loc[8] == [1]  # recipient 8 gets message 1 only
    assert set(sent["seq"]) == set(range(1, 9))  # 9-10 get nothing
    errors = plan[plan["status"] == "insufficient_tickets"]
    assert list(zip(errors["seq"], errors["message_no"], strict=True)) == [
        (8, 2),
        (9, 1),
        (9, 2),
        (10, 1),
        (10, 2),
    ]


def test_r10_order_is_recipient_then_message():
    plan = allocate_tickets(3, 2, 0)
    assert list(zip(plan["seq"], plan["message_no"], strict=True)) == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (3, 1),
        (3, 2),
    ]
    assert plan["status"].eq("insufficient_tickets").all()


def test_r15_allocation_over_arbitrary_pairs_keeps_their_order():
    pairs = pd.DataFrame({"seq": [8, 9, 9], "message_no": [2, 1, 2]})
    plan = allocate_plan(pairs, 2)
    assert plan["status"].tolist() == ["sent", "sent", "insufficient_tickets"]


@given(st.integers(0, 300), st.integers(1, 2), st.integers(0, 1000))
def test_r10_never_more_than_the_balance_and_always_a_prefix(recipients, messages, balance):
    plan = allocate_tickets(recipients, messages, balance)
    sent = (plan["status"] == "sent").to_numpy()
    assert sent.sum() == min(balance, recipients * messages)
    # a prefix: no sent pair after an unsent one
    assert not (sent[1:] & ~sent[:-1]).any()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ((1, 3, 1), "1 or 2 messages"),
        ((1, 0, 1), "1 or 2 messages"),
        ((-1, 2, 1), "recipients must be >= 0"),
        ((1, 2, -1), "balance must be >= 0"),
    ],
)
def test_r6_r10_impossible_inputs_are_a_clear_value_error(args, said):
    with pytest.raises(ValueError, match=said):
        allocate_tickets(*args)


@pytest.mark.parametrize(
    ("recipients", "messages", "balance"), [(10, 2, 15), (3, 1, 0), (4, 2, 8), (5, 2, 99)]
)
def test_r10_funded_pairs_counts_what_the_plan_funds(recipients, messages, balance):
    """The dispatcher counts funded pairs in the store (funded_pairs); the plan says the
    same: the first ``balance`` pairs in send order."""
    from smsops.domain.tickets import allocate_tickets, funded_pairs

    plan = allocate_tickets(recipients, messages, balance)
    assert funded_pairs(recipients * messages, balance) == int((plan["status"] == "sent").sum())
