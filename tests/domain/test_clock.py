"""R12 send times: ISO 8601, in the account's zone when no offset is given."""

from __future__ import annotations

import pytest

from smsops.clock import local_iso, parse_at, send_time
from smsops.errors import ScheduleError


def test_r12_a_time_without_offset_is_in_the_account_zone():
    assert parse_at("2099-12-01 10:00", "Asia/Tokyo").isoformat() == "2099-12-01T01:00:00+00:00"
    assert parse_at("2099-12-01T10:00:30Z", "Asia/Tokyo").isoformat() == "2099-12-01T10:00:30+00:00"


def test_r12_a_wall_time_daylight_saving_skips_is_refused():
    with pytest.raises(ScheduleError, match="does not exist in America/New_York"):
        parse_at("2099-03-08 02:30", "America/New_York")


def test_r12_a_wall_time_daylight_saving_repeats_asks_for_the_offset():
    with pytest.raises(ScheduleError, match=r"happens twice.*-04:00 or .*-05:00"):
        parse_at("2099-11-01 01:30", "America/New_York")
    # with the offset it is one instant
    assert parse_at("2099-11-01T01:30-05:00", "America/New_York").hour == 6


@pytest.mark.parametrize("text", ["", " ", "\u3000\t"])
def test_r12_blank_send_time_is_refused_not_read_as_now(text):
    # `--at "$UNSET"` must not become an immediate send: only None means "now".
    with pytest.raises(ScheduleError, match="the send time is empty"):
        parse_at(text, "Asia/Tokyo")
    with pytest.raises(ScheduleError, match="the send time is empty"):
        send_time(text, "Asia/Tokyo")
    assert send_time(None, "Asia/Tokyo") is None


@pytest.mark.parametrize(
    ("text", "tz"),
    [
        ("99999-01-01", "Asia/Tokyo"),
        ("+10000-01-01", "Asia/Tokyo"),
        ("9999-12-31T23:59-05:00", "Asia/Tokyo"),  # UTC is already in year 10000
        ("9999-12-31 23:00", "America/New_York"),  # the same, from a naive time
        ("9999-12-31T23:00Z", "Asia/Tokyo"),  # fine in UTC, past 9999 in Tokyo
    ],
)
def test_r12_a_send_time_past_year_9999_is_refused_clearly(text, tz):
    with pytest.raises(ScheduleError, match=r"too far ahead \(year \d{4,}\)"):
        parse_at(text, tz)


def test_r12_a_send_time_at_year_1_is_in_the_past_not_a_crash():
    with pytest.raises(ScheduleError, match="in the past"):
        parse_at("0001-01-01T00:00+09:00", "Asia/Tokyo")
    with pytest.raises(ScheduleError, match="in the past"):
        parse_at("0001-01-01 00:00", "America/New_York")


def test_r12_the_latest_send_time_is_before_9999_in_every_zone():
    with pytest.raises(ScheduleError, match="too far ahead"):
        parse_at("9999-01-01T00:00Z", "UTC")  # in Tokyo that is already 9999-01-01 09:00
    when = parse_at("9998-12-31T23:59Z", "UTC")  # the latest: it shows everywhere
    assert local_iso(when, "Pacific/Kiritimati") == "9999-01-01T13:59:00+14:00"
    assert local_iso(when, "Etc/GMT+12") == "9998-12-31T11:59:00-12:00"
