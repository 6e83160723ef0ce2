"""Rule edges at the command line (issue 18): usage errors, clear refusals with a JSON
document under --json, help that reads like a CLI's, and a confirmation question that
stays on the terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from support import mobile

from smsops import clock
from smsops.cli import app
from smsops.services import account as accounts
from smsops.services.context import Context
from smsops.services.dispatch import dispatch_due
from smsops.settings import Settings


def users(cli, n: int) -> None:
    path = cli.tmp / "users.csv"
    path.write_text(
        "user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(1, n + 1)),
        encoding="utf-8",
    )
    cli("users", "import", str(path))


def deliveries(cli) -> list[dict]:
    return json.loads(cli("deliveries", "list", "--json").stdout)["deliveries"]


def failed_delivery(cli) -> int:
    """A bulk delivery to 4 numbers whose numbers 3 and 4 failed for want of tickets (R10):
    scheduled, 2 of its 4 tickets spent, then sent after a jump of the clock."""
    users(cli, 4)
    cli("tickets", "add", "4")
    created = json.loads(
        cli("bulk", "create", "-m", "a", "--at", "2099-01-01 10:00", "--yes", "--json").stdout
    )
    cli("send", mobile(9), "-m", "x", "-m", "y")
    # dispatch-due on the same store, by a clock already at its send time
    ctx = Context.open(
        Settings(database_url=cli.env["SMSOPS_DATABASE_URL"], outbox=cli.env["SMSOPS_OUTBOX"]),
        clock=lambda: clock.now().replace(year=2099, month=1, day=2),
    )
    try:
        (done,) = dispatch_due(ctx)
    finally:
        ctx.close()
    assert (done.sent, done.errors) == (2, 2)
    return int(created["delivery_id"])


def one_document(result) -> dict:
    """stdout under --json: exactly one JSON document."""
    (line,) = result.stdout.strip().splitlines()
    return json.loads(line)


# --- R12: an empty --at is a usage error, never "now" ----------------------------------


@pytest.mark.parametrize("at", ["", "  "])
@pytest.mark.parametrize(
    "command",
    [
        ["bulk", "preview", "-m", "a"],
        ["bulk", "create", "-m", "a", "--yes"],
        ["resend", "1"],
        ["resend", "1", "--individual"],
    ],
)
def test_r12_blank_at_is_usage_error(cli, command, at):
    users(cli, 2)
    cli("tickets", "add", "10")
    result = cli(*command, "--at", at, code=2)
    assert "--at" in result.stderr and "the send time is empty" in result.stderr
    assert deliveries(cli) == [] and not (cli.tmp / "outbox.jsonl").exists()
    document = one_document(cli(*command, "--at", at, "--json", code=2))
    assert document["error"] == "usage" and "empty" in document["message"]


@pytest.mark.parametrize(
    "command, line",
    [
        (["resend", "1", "--individual", "--at", "2099-01-01 10:00"], "--at applies to a bulk"),
        (["resend", "1", "--phone", "09012345678"], "--phone applies to --individual"),
    ],
)
def test_r15_an_option_without_the_one_it_needs_is_a_usage_error(cli, command, line):
    """#14: an option the command cannot use here exits 2 and says "usage" under --json."""
    assert line in cli(*command, code=2).stderr
    document = one_document(cli(*command, "--json", code=2))
    assert document["error"] == "usage" and line in document["message"]


def test_r13_create_without_yes_names_the_rule_in_json(cli):
    users(cli, 1)
    document = one_document(cli("bulk", "create", "-m", "a", "--json", code=1))
    assert (document["error"], document["rule"]) == ("rule", "R13")
    assert "add --yes" in document["message"] and deliveries(cli) == []


# --- clear refusals instead of "unexpected" -------------------------------------------


@pytest.mark.parametrize(
    "at", ["99999-01-01", "+10000-01-01", "9999-12-31T23:59-05:00", "9999-12-31T23:00Z"]
)
def test_r12_send_time_past_year_9999_is_one_clear_line(cli, at):
    users(cli, 1)
    cli("tickets", "add", "5")
    for command in (["bulk", "preview", "-m", "a"], ["bulk", "create", "-m", "a", "--yes"]):
        result = cli(*command, "--at", at, code=1)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("smsops: R12: the send time is too far ahead"), line
        document = one_document(cli(*command, "--at", at, "--json", code=1))
        assert (document["error"], document["rule"]) == ("schedule", "R12")
    assert deliveries(cli) == []


@pytest.mark.parametrize(
    "command",
    [
        ["deliveries", "show", "99999999999999999999"],
        ["deliveries", "show", "0"],
        ["resend", "99999999999999999999"],
        ["dispatch", "99999999999999999999"],
    ],
)
def test_r14_a_delivery_id_the_store_cannot_hold_is_a_usage_error(cli, command):
    result = cli(*command, code=2)
    assert "is not a delivery id" in result.stderr and "unexpected" not in result.stderr
    document = one_document(cli(*command, "--json", code=2))
    assert document["error"] == "usage" and "is not a delivery id" in document["message"]


@pytest.mark.parametrize(
    "command, line",
    [
        # were exit 1, "a value is out of range" or "no delivery 0" (#14)
        (["deliveries", "errors", "99999999999999999999"], "is not a delivery id"),
        (["deliveries", "cancel", "99999999999999999999"], "is not a delivery id"),
        (["deliveries", "cancel", "0"], "is not a delivery id"),
        (["report", "99999999999999999999", "--html", "r.html"], "is not a delivery id"),
        # a port no socket takes: was exit 1, "a value is out of range"
        (["receiver", "--port", "99999"], "--port"),
        # Prefect refused the schedule: was exit 1, "unexpected ValidationError"
        (["serve", "--interval", "0"], "is not a positive number of seconds"),
        # LIMIT -1 was "no limit" on SQLite and an error on PostgreSQL
        (["deliveries", "list", "--limit", "-1"], "--limit"),
        (["deliveries", "show", "1", "--limit", "-1"], "--limit"),
        (["replies", "list", "--limit", "-1"], "--limit"),
    ],
)
def test_a_value_no_command_can_use_is_a_usage_error(cli, command, line):
    """#14: malformed command-line values exit 2 before any work, as the contract says,
    with one JSON document under --json."""
    assert line in cli(*command, code=2).stderr
    document = one_document(cli(*command, "--json", code=2))
    assert document["error"] == "usage" and line in document["message"]


def test_r11_a_ticket_balance_past_the_maximum_is_refused_clearly(cli):
    top = str(2**63 - 1)
    for count in (top, top, "99999999999999999999999"):
        result = cli("tickets", "add", count, code=1)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("smsops: tickets add: a balance holds at most 1,000,000,000")
        document = one_document(cli("tickets", "add", count, "--json", code=1))
        assert document["error"] == "input"
    assert one_document(cli("tickets", "balance", "--json")) == {"balance": 0}
    cli("tickets", "add", "1000000000")
    assert "a balance holds at most" in cli("tickets", "add", "1", code=1).stderr


def test_json_errors_print_a_document_on_every_path(cli, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\n[SQL: SELECT 09012345678]")

    monkeypatch.setattr(accounts, "balance", broken)
    result = cli("tickets", "balance", "--json", code=1, unexpected_ok=True)
    document = one_document(result)
    assert document == {"error": "unexpected", "message": "unexpected RuntimeError: disk on fire"}
    (line,) = result.stderr.strip().splitlines()  # one line: the SQL stays out
    assert line.startswith("smsops: unexpected RuntimeError: disk on fire")
    assert one_document(cli("tickets", "add", "x", "--json", code=2))["error"] == "usage"


# --- R1: resend --individual is no back door ------------------------------------------


def test_r1_individual_resend_refused_below_standard(cli):
    original = str(failed_delivery(cli))
    cli("tickets", "add", "10")
    cli("account", "set", "--plan", "free")
    before = deliveries(cli)
    for command in (
        ["resend", original],
        ["resend", original, "--individual"],
        ["resend", original, "--individual", "--phone", mobile(3)],
    ):
        result = cli(*command, code=1)
        assert "R1: bulk SMS needs the standard plan or above" in result.stderr
    assert deliveries(cli) == before
    assert one_document(cli("tickets", "balance", "--json")) == {"balance": 10}


def test_r9_individual_resend_needs_tickets_for_the_whole_resend(cli):
    original = str(failed_delivery(cli))
    cli("tickets", "add", "1")  # enough for one of the two numbers
    before = deliveries(cli)
    result = cli("resend", original, "--individual", code=1)
    assert "needed 2, balance 1, shortfall 1" in result.stderr
    assert deliveries(cli) == before


# --- R13: the question is visible on a terminal ---------------------------------------


def _screen(data: bytes) -> tuple[list[str], bool]:
    """What a terminal shows after ``data``: its lines, and whether the cursor is visible.
    Enough of a VT100 for rich's live display: CR, LF, erase line, cursor up, cursor
    visibility; other escapes (colours) change no text."""
    lines: list[list[str]] = [[]]
    row = col = 0
    visible = True
    text = data.decode("utf-8", "replace")
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            m = re.match(r"\x1b\[(\??)(\d*)(?:;\d+)*([A-Za-z])", text[i:])
            if m:
                private, n, op = m.groups()
                if private and n == "25":
                    visible = op == "h"
                elif op == "K" and n == "2":
                    lines[row] = []
                elif op == "A":
                    row = max(0, row - int(n or 1))
                i += m.end()
                continue
        elif ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            while len(lines) <= row:
                lines.append([])
        elif ch.isprintable():
            line = lines[row]
            line.extend(" " * (col - len(line)))
            line[col : col + 1] = [ch]
            col += 1
        i += 1
    return ["".join(line) for line in lines], visible


def _read(fd: int, until: float, stop: bytes | None = None) -> bytes:
    data = b""
    while time.monotonic() < until and not (stop and stop in data):
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    return data


def test_r13_the_confirmation_question_is_visible_on_a_terminal(cli):
    users(cli, 3)
    cli("tickets", "add", "5")
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "smsops.cli", "bulk", "create", "-m", "冬のセール"],
        stdin=child,
        stdout=child,
        stderr=child,
        env={**os.environ, **cli.env, "TERM": "xterm-256color", "COLUMNS": "100"},
        close_fds=True,
    )
    os.close(child)
    try:
        question = b"Save and send this delivery? [y/N]"
        shown = _read(main, time.monotonic() + 60, stop=question)
        assert question in shown, shown[-500:]
        # A live display would erase the line at its next refresh (10 a second): give
        # the outside process half a second of them before looking at the screen.
        shown += _read(main, time.monotonic() + 0.5)
        screen, cursor = _screen(shown)
        assert any("Save and send this delivery? [y/N]" in line for line in screen), screen
        assert any("Recipients 3" in line for line in screen), screen  # R13's screen
        assert cursor, "the cursor is hidden while the question waits"
        os.write(main, b"n\r")
        rest = _read(main, time.monotonic() + 30)
        assert proc.wait(timeout=30) == 1
        assert b"not confirmed; nothing was saved" in rest
    finally:
        proc.kill()
        proc.wait()
        os.close(main)
    assert deliveries(cli) == [] and not (cli.tmp / "outbox.jsonl").exists()


# --- help reads like a CLI's ----------------------------------------------------------

PYTHON_TYPES = ("<bool>", "<int>", "<str>", "<float>", "<Path>", "list[", "{", "NoneType", "str |")


def _commands() -> list[list[str]]:
    import typer

    root = typer.main.get_command(app)

    def walk(group, path: list[str]):
        yield path
        for name, sub in group.commands.items():
            if hasattr(sub, "commands"):
                yield from walk(sub, [*path, name])
            else:
                yield [*path, name]

    return list(walk(root, []))


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "smsops")
def test_help_shows_cli_metavars_not_python_types(cli, command):
    shown = cli(*command, "--help").stdout
    assert "Usage: smsops" in shown
    leaked = [t for t in PYTHON_TYPES if t in shown]
    assert leaked == [], shown


def test_help_names_values_as_a_cli_does(cli):
    create = cli("bulk", "create", "--help").stdout
    assert re.search(r"--message\s+-m\s+TEXT", create)
    assert re.search(r"--at\s+DATETIME", create) and re.search(r"--users\s+FILE", create)
    assert (
        "Usage: smsops deliveries show [OPTIONS] ID" in cli("deliveries", "show", "--help").stdout
    )
    assert "Usage: smsops tickets add [OPTIONS] N" in cli("tickets", "add", "--help").stdout
    assert "Usage: smsops users import [OPTIONS] FILE..." in cli("users", "import", "--help").stdout
