"""R2, R4, R5, R16: who receives a bulk delivery, and why the others do not."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from smsops import select_recipients
from smsops.domain.schemas import Exclusions, Recipients


def users(*phones: object) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(1, len(phones) + 1)],
            "phone": pd.Series(phones, dtype=object),
        }
    )


def test_r2_user_without_phone_is_not_a_candidate():
    sel = select_recipients(users("090-1111-2222", None, ""))
    assert sel.recipients["user_id"].tolist() == ["u1"]
    assert dict(zip(sel.excluded["user_id"], sel.excluded["reason"], strict=True)) == {
        "u2": "no_phone",
        "u3": "no_phone",
    }


def test_r2_phone_field_disabled_means_no_candidate_and_says_so():
    sel = select_recipients(users("090-1111-2222", "080-3333-4444"), phone_field_enabled=False)
    assert sel.recipients.empty
    assert sel.excluded["reason"].eq("phone_field_disabled").all()
    assert len(sel.excluded) == 2
    assert "phone field is disabled" in sel.diagnosis()
    assert sel.diagnosis().startswith("0 recipients")


def test_r3_only_mobiles_are_recipients():
    sel = select_recipients(users("03-1234-5678", "0800-123-4567", "090-1234-5678", "abc"))
    assert sel.recipients["phone"].tolist() == ["+819012345678"]
    assert sel.counts() == {"malformed": 1, "not_mobile": 2}


def test_r4_zero_recipients_is_explained_with_counts_per_reason():
    table = users(*([None] * 120 + ["03-1234-5678"] * 29 + ["06-1234-5678"]))
    sel = select_recipients(table)
    assert len(sel.recipients) == 0
    assert sel.counts() == {"no_phone": 120, "not_mobile": 30}
    text = sel.diagnosis()
    assert text.startswith("0 recipients from 150 users")
    assert "120 users have no phone number" in text
    assert "30 users have numbers that are not Japanese mobiles" in text


def test_r4_empty_table_is_explained():
    assert "empty" in select_recipients(users()).diagnosis()


def test_r5_duplicates_collapse_first_user_keeps_the_send():
    sel = select_recipients(
        users("090-1234-5678", "080-1111-2222", "+81 90 1234 5678", "０９０１２３４５６７８")
    )
    r = sel.recipients
    assert r["seq"].tolist() == [1, 2]
    assert r["user_id"].tolist() == ["u1", "u2"]
    assert r["user_ids"].iloc[0] == ["u1", "u3", "u4"]
    dups = sel.excluded[sel.excluded["reason"] == "duplicate"]
    assert dups["user_id"].tolist() == ["u3", "u4"]
    assert dups["duplicate_of"].tolist() == ["+819012345678"] * 2


def test_r5_an_excluded_first_user_does_not_steal_the_send():
    # u1 has a landline; u2 is the first *candidate* with the mobile number.
    sel = select_recipients(users("03-1234-5678", "090-1234-5678", "090-1234-5678"))
    assert sel.recipients["user_id"].tolist() == ["u2"]


def test_r16_opted_out_numbers_are_excluded_in_any_written_form():
    sel = select_recipients(
        users("090-1234-5678", "080-1111-2222", "090 1234 5678"), optouts=["+819012345678"]
    )
    assert sel.recipients["user_id"].tolist() == ["u2"]
    reasons = dict(zip(sel.excluded["user_id"], sel.excluded["reason"], strict=True))
    assert reasons == {"u1": "opted_out", "u3": "opted_out"}


def test_recipients_and_exclusions_follow_their_contracts():
    sel = select_recipients(users("090-1234-5678", None, "090-1234-5678"))
    Recipients.validate(sel.recipients)
    Exclusions.validate(sel.excluded)


_phone = st.sampled_from(
    [
        "090-1234-5678",
        "080-1111-2222",
        "070-5555-6666",
        "03-1234-5678",
        "",
        None,
        "x",
        "+81 80 1111 2222",
        "0120-123-456",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_phone, max_size=40), st.lists(_phone, max_size=3))
def test_r5_r16_every_user_is_accounted_for_exactly_once(phones, optouts):
    sel = select_recipients(users(*phones), optouts=optouts)
    all_ids = set(sel.excluded["user_id"]) | set(sel.recipients["user_id"])
    assert all_ids == {f"u{i}" for i in range(1, len(phones) + 1)}
    assert len(sel.excluded) + len(sel.recipients) == len(phones)
    assert sel.recipients["phone"].is_unique
    # user order: seq follows the order of each number's first user
    order = [int(u[1:]) for u in sel.recipients["user_id"]]
    assert order == sorted(order)
