"""R12 send times: ISO 8601, in the account's zone when no offset is given."""

from __future__ import annotations

import pytest

from smsops.clock import parse_at
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
