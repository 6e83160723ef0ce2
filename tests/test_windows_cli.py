"""`account set --window` and `--outside-window` (#11) at the command line: a send outside
the window is one clear line and exit 1, nothing saved."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from support import users_csv

from smsops.domain.windows import Window


def _shut_now() -> str:
    """A window that opens two hours from now and shuts an hour later (Tokyo time)."""
    now = datetime.now(UTC).astimezone(ZoneInfo("Asia/Tokyo"))
    opens, shuts = now + timedelta(hours=2), now + timedelta(hours=3)
    return f"{opens:%H:%M}-{shuts:%H:%M}"


def test_account_set_window_and_off(cli):
    out = json.loads(cli("account", "set", "--window", "9:00-20:00", "--json").stdout)
    assert out["window"] == "09:00-20:00"
    assert "09:00-20:00" in cli("account", "show").stdout
    bad = cli("account", "set", "--window", "nine to eight", code=1)
    assert bad.stderr.strip().splitlines() == [
        "smsops: --window: cannot read the sending window 'nine to eight': use HH:MM-HH:MM "
        "such as 09:00-20:00, or off"
    ]
    assert "window" not in json.loads(cli("account", "set", "--window", "off", "--json").stdout)


def test_r12_bulk_create_outside_the_window_is_one_line_exit_1_and_saves_nothing(cli):
    window = _shut_now()
    cli("account", "set", "--window", window)
    cli("tickets", "add", "10")
    users = users_csv(cli.tmp, ["090-1234-5678", "080-1111-2222"])
    refused = cli("bulk", "create", "-m", "セール", "--users", str(users), "--yes", code=1)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "is outside the sending window" in lines[0]
    opening = Window.parse(window).next_opening(datetime.now(UTC), "Asia/Tokyo")
    assert opening.astimezone(ZoneInfo("Asia/Tokyo")).isoformat(timespec="seconds") in lines[0]
    assert json.loads(cli("deliveries", "list", "--json").stdout)["deliveries"] == []
    sent = cli(
        "bulk", "create", "-m", "緊急", "--users", str(users), "--yes", "--outside-window", "--json"
    )
    assert json.loads(sent.stdout)["status"] == "sent"
    assert cli("send", "090-1234-5678", "-m", "発送しました", code=1).stderr.count("\n") == 1
    cli("send", "090-1234-5678", "-m", "発送しました", "--outside-window")
