"""R4, R5, R16 batch by batch (#12): a user table fed to RecipientStream in batches selects
exactly what select_recipients selects from the whole table."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from smsops import select_recipients
from smsops.domain.recipients import RecipientStream
from smsops.domain.schemas import Exclusions


def users(*phones: object) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(1, len(phones) + 1)],
            "phone": pd.Series(phones, dtype=object),
        }
    )


def streamed(table: pd.DataFrame, size: int, **kwargs: object) -> tuple[RecipientStream, list]:
    stream = RecipientStream(**kwargs)  # type: ignore[arg-type]
    batches = [stream.feed(table.iloc[i : i + size]) for i in range(0, len(table), size)]
    return stream, batches


def test_r5_a_number_seen_in_an_earlier_batch_is_a_duplicate_of_it():
    table = users("090-1111-2222", "080-3333-4444", "+81 90 1111 2222", "090-5555-6666")
    stream, (first, second) = streamed(table, 2)
    assert first.recipients["user_id"].tolist() == ["u1", "u2"]
    assert second.recipients[["seq", "user_id"]].values.tolist() == [[3, "u4"]]
    assert second.excluded[["user_id", "reason", "duplicate_of"]].values.tolist() == [
        ["u3", "duplicate", "+819011112222"]
    ]
    assert (stream.users, stream.recipients, stream.counts()) == (4, 3, {"duplicate": 1})


def test_r16_optouts_apply_to_every_batch():
    table = users("090-1111-2222", "080-3333-4444", "08033334444")
    stream, batches = streamed(table, 1, optouts=["080 3333 4444"])
    assert [len(b.recipients) for b in batches] == [1, 0, 0]
    assert stream.counts() == {"opted_out": 2}


def test_r2_phone_field_disabled_batch_by_batch():
    stream, batches = streamed(
        users("090-1111-2222", None, "080-3333-4444"), 2, phone_field_enabled=False
    )
    assert sum(len(b.recipients) for b in batches) == 0
    assert stream.counts() == {"phone_field_disabled": 3}
    assert (
        stream.diagnosis()
        == select_recipients(
            users("090-1111-2222", None, "080-3333-4444"), phone_field_enabled=False
        ).diagnosis()
    )


_phone = st.sampled_from(
    [
        "090-1234-5678",
        "09012345678",
        "+81 90 1234 5678",
        "080-1111-2222",
        "070-5555-6666",
        "060-1234-5678",
        "03-1234-5678",
        "0120-123-456",
        "",
        None,
        "x",
        "+1 212 555 0100",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_phone, max_size=40),
    st.lists(_phone, max_size=3),
    st.integers(min_value=1, max_value=9),
)
def test_r4_r5_r16_batches_end_to_end_are_the_whole_table_selection(phones, optouts, size):
    table = users(*phones)
    whole = select_recipients(table, optouts=optouts)
    stream, batches = streamed(table, size, optouts=optouts)
    assert len(batches) == -(-len(phones) // size)  # fed per batch, never whole
    recipients = pd.concat([b.recipients for b in batches] or [whole.recipients], ignore_index=True)
    expected = whole.recipients[["seq", "phone", "user_id"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(recipients[["seq", "phone", "user_id"]], expected)
    excluded = pd.concat([b.excluded for b in batches] or [whole.excluded], ignore_index=True)
    pd.testing.assert_frame_equal(excluded, whole.excluded.reset_index(drop=True))
    Exclusions.validate(excluded)
    assert (stream.users, stream.recipients) == (whole.users, len(whole.recipients))
    assert stream.counts() == whole.counts()
    assert stream.diagnosis() == whole.diagnosis()
