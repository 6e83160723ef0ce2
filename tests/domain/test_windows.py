"""Sending windows (#11): which moments are inside, when the next opening is, how many
messages fit before the close, and when the last one leaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smsops.domain.windows import MARGIN, Window, estimate, room

TOKYO = "Asia/Tokyo"
DAY = Window.parse("09:00-20:00")


def jst(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A moment of December 2026 in Tokyo, as UTC."""
    return datetime(2026, 12, day, hour, minute, second, tzinfo=UTC) - timedelta(hours=9)


def test_window_is_half_open_in_the_accounts_zone():
    assert DAY.contains(jst(1, 9), TOKYO)
    assert DAY.contains(jst(1, 19, 59, 59), TOKYO)
    assert not DAY.contains(jst(1, 20), TOKYO)
    assert not DAY.contains(jst(1, 8, 59, 59), TOKYO)
    assert not DAY.contains(jst(1, 23), TOKYO)
    assert DAY.closes_at(jst(1, 12), TOKYO) == jst(1, 20)


def test_next_opening_is_tomorrow_morning_after_the_close_and_today_before_it():
    assert DAY.next_opening(jst(1, 20), TOKYO) == jst(2, 9)
    assert DAY.next_opening(jst(2, 3), TOKYO) == jst(2, 9)
    assert DAY.earliest(jst(1, 10), TOKYO) == jst(1, 10)


def test_a_window_across_midnight_and_one_to_midnight():
    night = Window.parse("21:00-02:00")
    assert night.contains(jst(1, 23), TOKYO) and night.contains(jst(2, 1, 59), TOKYO)
    assert not night.contains(jst(2, 2), TOKYO) and not night.contains(jst(2, 12), TOKYO)
    late = Window.parse("09:00-24:00")
    assert str(late) == "09:00-00:00" and late.contains(jst(1, 23, 59), TOKYO)
    assert not late.contains(jst(2, 0), TOKYO)


@pytest.mark.parametrize("text", ["9-20", "09:00", "25:00-26:00", "09:60-10:00", "10:00-10:00", ""])
def test_a_window_that_cannot_be_read_says_why(text):
    with pytest.raises(ValueError, match="sending window"):
        Window.parse(text)


def test_room_is_what_leaves_before_the_close_at_the_rate():
    assert room(jst(1, 19, 59, 55), rate=500, window=DAY, tz=TOKYO) == int((5 - MARGIN) * 500)
    assert (
        room(jst(1, 19, 59, 59), rate=500, window=DAY, tz=TOKYO) == 0
    )  # less than the margin left
    assert room(jst(1, 21), rate=500, window=DAY, tz=TOKYO) == 0  # shut
    assert room(jst(1, 12), rate=None, window=DAY, tz=TOKYO) is None  # no rate to judge by
    assert room(jst(1, 21), rate=500, window=None, tz=TOKYO) is None  # no window


def test_estimate_pauses_at_the_close_and_finishes_after_the_next_opening():
    e = estimate(jst(1, 19, 59, 55), 30_000, 500, window=DAY, tz=TOKYO)
    assert e is not None and e.pauses == ((jst(1, 20), jst(2, 9)),)
    assert e.finish == jst(2, 9) + timedelta(seconds=(30_000 - 2_000) / 500)
    assert e.unwindowed == jst(1, 19, 59, 55) + timedelta(seconds=60)
    inside = estimate(jst(1, 10), 30_000, 500, window=DAY, tz=TOKYO)
    assert inside is not None and inside.finish == jst(1, 10, 1) and not inside.pauses
    before = estimate(jst(1, 7), 500, 500, window=DAY, tz=TOKYO)  # starts when the window opens
    assert before is not None and before.finish == jst(1, 9, 0, 1)


@given(
    start=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
    ),
    pairs=st.integers(1, 2_000_000),
    rate=st.sampled_from([50.0, 500.0, 1000.0]),
    zone=st.sampled_from([TOKYO, "America/New_York", "Europe/London"]),
)
def test_estimate_never_sends_outside_the_window_and_sends_everything(start, pairs, rate, zone):
    e = estimate(start, pairs, rate, window=DAY, tz=zone)
    assert e is not None
    assert e.finish >= e.unwindowed - timedelta(seconds=1e-6)
    for closes, reopens in e.pauses:
        assert not DAY.contains(reopens - timedelta(seconds=1), zone)
        assert DAY.contains(reopens, zone) and reopens > closes
    assert DAY.contains(e.finish - timedelta(microseconds=1), zone) or e.finish == start
