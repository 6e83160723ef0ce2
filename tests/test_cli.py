"""The CLI contract of DESIGN.md: one test per command, JSON shapes, exit codes."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from clocks import Clock, jst
from support import e164, mobile, users_csv

from smsops.cli import app
from smsops.services.context import Context
from smsops.services.dispatch import dispatch_due
from smsops.settings import Settings

AT_TEN = "2099-12-01 10:00"  # a send time, in the account's zone (Asia/Tokyo)
TEN = jst(2099, 12, 1, 10)


def dispatch_due_at(cli, when: datetime) -> list[dict]:
    """What ``smsops dispatch-due`` sends at ``when``: its service on the CLI's store, with
    a clock at ``when`` (#14). The command reads the real time; the tests do not wait for a
    scheduled delivery to fall due."""
    settings = Settings(
        database_url=cli.env["SMSOPS_DATABASE_URL"],
        outbox=cli.env["SMSOPS_OUTBOX"],
        chunk_size=int(cli.env["SMSOPS_CHUNK_SIZE"]),
    )
    ctx = Context.open(settings, clock=Clock(when, frozen=True))
    try:
        return [result.to_dict() for result in dispatch_due(ctx)]
    finally:
        ctx.close()


def as_json(result) -> dict:
    return json.loads(result.stdout)


def test_account_show_and_set(cli):
    assert as_json(cli("account", "show", "--json")) == {
        "plan": "standard",
        "phone_field_enabled": True,
        "timezone": "Asia/Tokyo",
    }
    out = as_json(
        cli(
            "account",
            "set",
            "--plan",
            "premium",
            "--phone-field",
            "off",
            "--timezone",
            "UTC",
            "--json",
        )
    )
    assert out == {"plan": "premium", "phone_field_enabled": False, "timezone": "UTC"}
    result = cli("account", "set", "--plan", "gold", code=1)
    assert "unknown plan 'gold'" in result.stderr
    cli("account", "set", "--timezone", "Mars/Base", code=1)
    cli("account", "set", "--phone-field", "maybe", code=2)


def test_tickets_balance_and_add(cli):
    assert as_json(cli("tickets", "balance", "--json")) == {"balance": 0}
    assert as_json(cli("tickets", "add", "15", "--json"))["balance"] == 15
    assert as_json(cli("tickets", "balance", "--json")) == {"balance": 15}
    assert "15 tickets" in cli("tickets", "balance").stdout
    for count in ("0", "-5"):  # a negative count is a refused count, not a usage error
        refused = cli("tickets", "add", count, code=1)
        assert refused.stderr.strip() == f"smsops: tickets add: count must be positive, got {count}"
    cli("tickets", "add", "many", code=2)
    cli("tickets", "add", "5", "--jsn", code=2)
    assert as_json(cli("tickets", "balance", "--json")) == {"balance": 15}


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_users_import_reads_excel_encodings(cli, encoding):
    path = users_csv(cli.tmp, [mobile(1), "０９０－１０００－０００２", ""], encoding=encoding)
    assert as_json(cli("users", "import", str(path), "--json")) == {
        "rows": 3,
        "users_total": 3,
        "phone_column": "phone",
    }
    preview = as_json(cli("bulk", "preview", "-m", "hi", "--json"))
    assert preview["recipients"] == 2


def test_users_import_is_all_or_nothing_and_names_file_row_column(cli):
    good = users_csv(cli.tmp, [mobile(1)], "good.csv")
    bad = cli.tmp / "bad.csv"
    bad.write_text("user_id,phone\nu2,09010000002\n,09010000003\n", encoding="utf-8")
    result = cli("users", "import", str(good), str(bad), code=1)
    assert "bad.csv" in result.stderr and "row 2" in result.stderr
    assert "user_id" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert as_json(cli("users", "import", str(good), "--json"))["users_total"] == 1
    cli("users", "import", str(cli.tmp / "missing.csv"), code=1)


def test_issue11_users_import_mode_replace_makes_missing_users_inactive_never_deleted(cli):
    """`users import --mode replace` (#11): a full export; stored users it lacks become
    inactive — counted, kept in the table and in history (R14), never selected — and the
    default (upsert) makes a user it holds active again."""
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1), mobile(2), mobile(3)])))
    cli("tickets", "add", "3")
    sent = as_json(cli("bulk", "create", "-m", "hi", "--yes", "--json"))

    full = users_csv(cli.tmp, [mobile(1)], "full.csv")  # u1 only
    shown = cli("users", "import", str(full), "--mode", "replace")
    assert "2 users not in the export are now inactive" in shown.stdout
    again = as_json(cli("users", "import", str(full), "--mode", "replace", "--json"))
    assert again == {"rows": 1, "users_total": 3, "phone_column": "phone", "deactivated": 0}
    preview = as_json(cli("bulk", "preview", "-m", "hi", "--json"))
    assert preview["recipients"] == 1
    assert "2 inactive users" in preview["diagnosis"]
    history = as_json(cli("deliveries", "show", str(sent["delivery_id"]), "--json"))
    assert [i["phone"] for i in history["items"]] == [e164(1), e164(2), e164(3)]

    # upsert (the default) adds and updates only; the file's u2 is active again
    back = users_csv(cli.tmp, [mobile(1), mobile(2)], "back.csv")
    assert "deactivated" not in as_json(cli("users", "import", str(back), "--json"))
    assert as_json(cli("bulk", "preview", "-m", "hi", "--json"))["recipients"] == 2
    cli("users", "import", str(back), "--mode", "delete", code=2)


def test_optout_import_add_remove(cli):
    path = cli.tmp / "optouts.csv"
    path.write_text(f"phone\n{mobile(1)}\n{mobile(2)}\n", encoding="utf-8")
    assert as_json(cli("optout", "import", str(path), "--json"))["added"] == 2
    assert as_json(cli("optout", "add", "+81 90 1000 0003", "--json"))["phone"] == e164(3)
    assert as_json(cli("optout", "remove", mobile(1), "--json"))["optouts_total"] == 2
    cli("optout", "remove", mobile(1), code=1)
    cli("optout", "add", "not a number", code=1)
    users = users_csv(cli.tmp, [mobile(1), mobile(2), mobile(3), mobile(4)])
    cli("users", "import", str(users))
    preview = as_json(cli("bulk", "preview", "-m", "hi", "--json"))
    assert (preview["recipients"], preview["excluded"]) == (2, {"opted_out": 2})


def test_bulk_preview_json_shape(cli):
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1), mobile(2), "03-1234-5678"])))
    cli("tickets", "add", "3")
    out = as_json(
        cli("bulk", "preview", "-m", "セール", "-m", "詳細", "--at", "2099-12-01 10:00", "--json")
    )
    assert {
        k: out[k]
        for k in ("recipients", "messages", "tickets_needed", "balance", "scheduled_at", "excluded")
    } == {
        "recipients": 2,
        "messages": 2,
        "tickets_needed": 4,
        "balance": 3,
        "scheduled_at": "2099-12-01T10:00:00+09:00",
        "excluded": {"not_mobile": 1},
    }
    human = cli("bulk", "preview", "-m", "セール").stdout
    assert "090-****-0001" in human and "Tickets" in human and "needed 2" in human
    assert "+819010000001" not in human  # masked on the confirmation screen


def test_bulk_create_sends_now_or_schedules(cli):
    cli("users", "import", str(users_csv(cli.tmp, [mobile(i) for i in range(1, 8)])))
    cli("tickets", "add", "30")
    now = as_json(cli("bulk", "create", "-m", "a", "-m", "b", "--yes", "--json"))
    assert {
        k: now[k] for k in ("status", "recipients", "messages", "tickets_needed", "scheduled_at")
    } == {
        "status": "sent",
        "recipients": 7,
        "messages": 2,
        "tickets_needed": 14,
        "scheduled_at": None,
    }
    later = as_json(
        cli("bulk", "create", "-m", "a", "--at", "2099-01-01T10:00:30+09:00", "--yes", "--json")
    )
    assert later["status"] == "scheduled"
    assert later["scheduled_at"] == "2099-01-01T10:00:30+09:00"
    lines = (cli.tmp / "outbox.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 14
    assert set(json.loads(lines[0])) == {
        "delivery_id",
        "phone",
        "message_no",
        "text",
        "idempotency_key",
        "accepted_at",
    }


def test_r13_bulk_create_without_yes_asks_and_saves_nothing_if_declined(cli):
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1)])))
    cli("tickets", "add", "5")
    result = cli("bulk", "create", "-m", "a", code=1)  # no terminal to ask on
    assert "--yes" in result.stderr
    assert as_json(cli("deliveries", "list", "--json")) == {"deliveries": []}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "あ" * 71], "message 1 is 71 characters"),
        (["-m", "%name%様"], "R7"),
        (["-m", "a", "--at", "2001-01-01 10:00"], "in the past"),
        (["-m", "a", "-m", "b", "-m", "c"], "1 or 2 messages"),
    ],
)
def test_bulk_create_refusals_exit_1_with_one_line(cli, args, message):
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1)])))
    cli("tickets", "add", "5")
    result = cli("bulk", "create", *args, "--yes", code=1)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_r1_plan_gate_through_the_cli(cli):
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1)])))
    cli("account", "set", "--plan", "light")
    result = cli("bulk", "preview", "-m", "a", code=1)
    assert "standard plan" in result.stderr


def test_send_individual(cli):
    cli("tickets", "add", "2")
    out = as_json(cli("send", "090-1000-0001", "-m", "こんにちは", "--json"))
    assert (out["status"], out["sent"], out["recipients"]) == ("sent", 1, 1)
    out = as_json(cli("send", "090-1000-0001", "-m", "again", "--json"))
    assert out["status"] == "sent"  # never deduplicated (R5)
    assert "R9" in cli("send", "090-1000-0001", "-m", "x", code=1).stderr
    assert "R3" in cli("send", "03-1234-5678", "-m", "x", code=1).stderr
    refused = cli("send", "090-1234-5678 内線12", "-m", "x", code=1).stderr  # personal data:
    assert "R3" in refused and "090-****-5678" in refused and "1234" not in refused  # masked


def test_deliveries_list_show_errors_cancel(cli):
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1), mobile(2)])))
    cli("tickets", "add", "5")
    sent = as_json(cli("bulk", "create", "-m", "a", "--yes", "--json"))
    later = as_json(cli("bulk", "create", "-m", "b", "--at", "2099-01-01 09:00", "--yes", "--json"))
    listed = as_json(cli("deliveries", "list", "--json"))["deliveries"]
    assert [d["id"] for d in listed] == [later["delivery_id"], sent["delivery_id"]]
    assert set(listed[0]) >= {
        "id",
        "kind",
        "status",
        "scheduled_at",
        "recipients",
        "sent",
        "errors",
        "tickets_used",
        "resend_of",
    }
    shown = as_json(cli("deliveries", "show", str(sent["delivery_id"]), "--json"))
    assert shown["delivery"]["status"] == "sent"
    assert shown["items"] == [
        {"seq": 1, "phone": e164(1), "message_no": 1, "status": "sent", "error": None}
        | {"dlr_status": None, "dlr_at": None, "dlr_reason": None},  # no report asked for
        {"seq": 2, "phone": e164(2), "message_no": 1, "status": "sent", "error": None}
        | {"dlr_status": None, "dlr_at": None, "dlr_reason": None},
    ]
    pending = as_json(cli("deliveries", "show", str(later["delivery_id"]), "--json"))
    assert {i["status"] for i in pending["items"]} == {"pending"}
    assert (
        as_json(cli("deliveries", "cancel", str(later["delivery_id"]), "--json"))["status"]
        == "cancelled"
    )
    cancelled = as_json(cli("deliveries", "show", str(later["delivery_id"]), "--json"))
    assert {i["status"] for i in cancelled["items"]} == {"cancelled"}
    cli("deliveries", "cancel", str(sent["delivery_id"]), code=1)
    cli("deliveries", "show", "999", code=1)
    errors = as_json(cli("deliveries", "errors", str(sent["delivery_id"]), "--json"))
    assert errors["errors"] == []


def test_deliveries_errors_csv_is_safe_against_formula_injection(cli):
    path = cli.tmp / "users.csv"
    path.write_text(
        f'user_id,phone\n=HYPERLINK("x"),{mobile(1)}\n@SUM(1),{mobile(2)}\n', encoding="utf-8"
    )
    cli("users", "import", str(path))
    cli("tickets", "add", "4")
    created = as_json(
        cli("bulk", "create", "-m", "a", "-m", "b", "--at", AT_TEN, "--yes", "--json")
    )
    # spend the tickets so the scheduled delivery fails at send time
    cli("send", mobile(9), "-m", "x", "-m", "y")
    cli("send", mobile(9), "-m", "x", "-m", "y")
    dispatch_due_at(cli, TEN)
    data = cli("deliveries", "errors", str(created["delivery_id"]), "--csv").stdout_bytes
    assert data.startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM, for Excel
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0] == ["seq", "user_id", "phone", "message_no", "error"]
    assert len(rows) == 5
    for row in rows[1:]:
        for cell in row:
            if not re.fullmatch(r"\+\d+", cell):
                assert not cell.startswith(("=", "+", "-", "@")), row
    assert rows[1][1] == '\'=HYPERLINK("x")'
    assert rows[3][1] == "'@SUM(1)"
    assert rows[1][2] == "090-1000-0001"  # what Excel keeps as text (E.164 turns to 8.19E+11)
    assert rows[1][4] == "insufficient_tickets"


def test_r14_deliveries_show_and_errors_on_a_terminal_with_failed_pairs(cli):
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1), mobile(2)])))
    cli("tickets", "add", "4")
    created = as_json(
        cli("bulk", "create", "-m", "a", "-m", "b", "--at", AT_TEN, "--yes", "--json")
    )
    cli("send", mobile(9), "-m", "x")  # 3 tickets left at send time: seq 2 message 2 fails
    dispatch_due_at(cli, TEN)
    delivery = str(created["delivery_id"])
    shown = cli("deliveries", "show", delivery).stdout
    assert "partially_sent" in shown
    assert shown.count("insufficient_tickets") == 1 and shown.count("sent") >= 3
    assert "nan" not in shown and e164(1) not in shown  # blanks, and masked numbers
    errors = cli("deliveries", "errors", delivery).stdout
    assert "insufficient_tickets" in errors and "1 failed" in errors and "nan" not in errors


def test_resend_bulk_and_individual(cli):
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1), mobile(2), mobile(3)])))
    cli("tickets", "add", "6")
    first = as_json(cli("bulk", "create", "-m", "a", "-m", "b", "--at", AT_TEN, "--yes", "--json"))
    cli("send", mobile(9), "-m", "x")  # balance 5 at send time: recipient 3 gets message 1
    assert as_json(cli("dispatch-due", "--json")) == {"dispatched": []}  # R12: not yet
    assert dispatch_due_at(cli, TEN - timedelta(seconds=1)) == []
    dispatched = dispatch_due_at(cli, TEN)
    assert [(d["delivery_id"], d["sent"], d["errors"]) for d in dispatched] == [
        (first["delivery_id"], 5, 1)
    ]
    cli("resend", str(first["delivery_id"]), code=1)  # R9: no tickets left
    cli("tickets", "add", "2")
    out = as_json(cli("resend", str(first["delivery_id"]), "--json"))
    assert (out["resend_of"], out["sent"], out["tickets_needed"]) == (first["delivery_id"], 1, 1)
    shown = as_json(cli("deliveries", "show", str(out["delivery_id"]), "--json"))
    assert [(i["seq"], i["message_no"]) for i in shown["items"]] == [(3, 2)]
    again = cli("resend", str(first["delivery_id"]), "--individual", code=1)
    assert "no failed messages" in again.stderr  # repaired already: never sent twice


def test_resend_individual_one_number(cli):
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1), mobile(2)])))
    cli("tickets", "add", "4")
    first = as_json(cli("bulk", "create", "-m", "a", "-m", "b", "--at", AT_TEN, "--yes", "--json"))
    cli("send", mobile(9), "-m", "x", "-m", "y")  # 2 left at send time: recipient 2 fails
    dispatch_due_at(cli, TEN)
    cli("tickets", "add", "2")
    indiv = as_json(
        cli("resend", str(first["delivery_id"]), "--individual", "--phone", mobile(2), "--json")
    )["deliveries"]
    assert [(d["recipients"], d["sent"], d["resend_of"]) for d in indiv] == [
        (1, 2, first["delivery_id"])
    ]
    cli("resend", str(first["delivery_id"]), "--individual", "--phone", mobile(1), code=1)


def test_dispatch_due_with_nothing_due(cli):
    assert as_json(cli("dispatch-due", "--json")) == {"dispatched": []}
    assert "nothing due" in cli("dispatch-due").stdout


def test_console_script_exit_codes_and_no_traceback(tmp_path):
    exe = Path(sys.executable).parent / "smsops"
    env = {"SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [exe, "tickets", "balance", "--json"], env=env, capture_output=True, text=True
    )
    assert (ok.returncode, json.loads(ok.stdout)) == (0, {"balance": 0})
    usage = subprocess.run([exe, "tickets", "add"], env=env, capture_output=True, text=True)
    assert usage.returncode == 2
    bad = subprocess.run([exe, "deliveries", "show", "7"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "smsops: no delivery 7"
    broken = subprocess.run(
        [exe, "tickets", "balance"],
        capture_output=True,
        text=True,
        env={**env, "SMSOPS_DATABASE_URL": "nonsense://"},
    )
    assert broken.returncode == 1 and "Traceback" not in broken.stderr


def test_r13_bulk_preview_exports_the_whole_recipient_list(cli):
    phones = [mobile(i) for i in range(1, 16)] + [mobile(1), "03-1234-5678"]
    cli("users", "import", str(users_csv(cli.tmp, phones)))
    target = cli.tmp / "recipients.csv"
    out = as_json(cli("bulk", "preview", "-m", "a", "--export", str(target), "--json"))
    assert out["recipients"] == 15 and len(out["sample"]) == 10  # the screen shows a sample
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8-sig"))))
    assert rows[0] == ["seq", "phone", "user_id", "users"]
    assert len(rows) == 16  # ... the file has everyone
    assert rows[1] == ["1", "090-1000-0001", "u1", "2"]  # u16 shares u1's number (R5)
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, 16)]


def test_every_command_accepts_json():
    """DESIGN.md: "Every command accepts --json"."""
    import click
    import typer

    root = typer.main.get_command(app)

    def leaves(group, ctx: click.Context, path: str = ""):
        for name in group.list_commands(ctx):
            sub = group.get_command(ctx, name)
            if hasattr(sub, "list_commands"):  # a group (typer's own Group class)
                yield from leaves(sub, click.Context(sub, parent=ctx), f"{path}{name} ")
            else:
                yield f"{path}{name}", sub

    commands = dict(leaves(root, click.Context(root)))
    assert {"serve", "dispatch-due", "bulk create", "deliveries show", "tickets add"} <= set(
        commands
    )
    missing = [
        name
        for name, cmd in commands.items()
        if "--json" not in [o for p in cmd.params for o in getattr(p, "opts", [])]
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("SMSOPS_GATEWAY", "bogus", "SMSOPS_GATEWAY='bogus': Input should be 'outbox' or 'kannel'"),
        ("SMSOPS_CHUNK_SIZE", "0", "SMSOPS_CHUNK_SIZE='0': Input should be greater than or equal"),
        ("SMSOPS_RATE_LIMIT", "-1", "SMSOPS_RATE_LIMIT='-1': Input should be greater than 0"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(cli, variable, value, said):
    cli.env[variable] = value  # type: ignore[attr-defined]
    result = cli("tickets", "balance", code=1)
    assert result.stderr.startswith(f"smsops: {said}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_r13_user_text_is_shown_exactly_never_read_as_markup(cli):
    # Square brackets are common in Japanese marketing texts ([重要], [VIP]); the
    # confirmation must show what will be sent, and tables must not choke on them.
    path = cli.tmp / "users.csv"
    path.write_text(f"user_id,phone\n[red]b,{mobile(1)}\n[/]a,{mobile(2)}\n", encoding="utf-8")
    cli("users", "import", str(path))
    cli("tickets", "add", "4")
    shown = cli(
        "bulk",
        "preview",
        "-m",
        "[/] セール [vip]",
        "-m",
        "[bold]二通目",
        "--query",
        "user_id != '[x]'",
    )
    assert "[/] セール [vip]" in shown.stdout and "[bold]二通目" in shown.stdout
    assert "--query \"user_id != '[x]'\" picks 2 of the 2 users" in shown.stdout
    created = as_json(
        cli("bulk", "create", "-m", "a", "-m", "b", "--at", AT_TEN, "--yes", "--json")
    )
    cli("send", mobile(9), "-m", "x", "-m", "y")  # 2 tickets left at send time
    dispatch_due_at(cli, TEN)
    errors = cli("deliveries", "errors", str(created["delivery_id"])).stdout
    assert "[/]a" in errors and "2 failed" in errors  # the second user's two messages


# --- threat model: a CLI user (README, "Who can do what") -------------------------------


def test_threat_cli_query_runs_no_code_and_selects_by_japanese_headers(cli):
    pwned = cli.tmp / "pwned"
    hostile = (
        f"user_id.__class__.__init__.__globals__['sys'].modules['os'].system('touch {pwned}') == 0"
    )
    path = cli.tmp / "members.csv"
    rows = [
        ("m1", mobile(1), "山田　太郎"),
        ("m2", mobile(2), "佐藤　花子"),
        ("m3", mobile(3), "山田　太郎"),
    ]
    path.write_text(
        "会員ID,電話番号,氏名\n" + "".join(f"{u},{p},{n}\n" for u, p, n in rows), encoding="utf-8"
    )
    cli("users", "import", str(path))
    refused = cli("bulk", "preview", "-m", "x", "--query", hostile, code=1)
    assert not pwned.exists()
    assert refused.stderr.splitlines() == [
        "smsops: --query: 'user_id.__class__': names starting with '__' are not allowed"
    ]
    doc = as_json(cli("bulk", "create", "-m", "x", "--query", hostile, "--yes", "--json", code=1))
    assert doc["error"] == "input" and not pwned.exists()
    picked = as_json(
        cli("bulk", "preview", "-m", "x", "--query", "`氏名` == '山田　太郎'", "--json")
    )
    assert picked["recipients"] == sum(name == "山田　太郎" for _, _, name in rows)
