"""Delivery reports in history (R14), resend (R15), and whose they are: each report
belongs to one installation and one message, and a final state is never overwritten by
an older or interim one."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr
from sqlalchemy import and_, select
from support import add_users, e164, mobile
from typer.testing import CliRunner

from smsops.cli import app
from smsops.errors import InputError
from smsops.gateways.kannel import KannelGateway
from smsops.receiver import Receiver
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.services.inbound import ReportRefused, installation_id, record_dlr
from smsops.settings import Settings
from smsops.store import read, write
from smsops.store.schema import items

TOKEN = secrets.token_urlsafe(32)
T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)


def sent_delivery(ctx: Context, recipients: int = 3, messages: int = 1) -> int:
    """A bulk delivery, dispatched to the outbox: every pair sent."""
    add_users(ctx, [mobile(i) for i in range(1, recipients + 1)])
    accounts.add_tickets(ctx, recipients * messages)
    texts = [f"お知らせ{i}" for i in range(1, messages + 1)]
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, texts))
    dispatch(ctx, created.delivery_id)
    return created.delivery_id


def set_item(ctx: Context, delivery_id: int, seq: int, **values: object) -> None:
    with write(ctx.engine) as conn:
        conn.execute(
            items.update()
            .where(and_(items.c.delivery_id == delivery_id, items.c.seq == seq))
            .values(**values)
        )


def item(ctx: Context, delivery_id: int, seq: int):  # type: ignore[no-untyped-def]
    with read(ctx.engine) as conn:
        return conn.execute(
            select(items).where(and_(items.c.delivery_id == delivery_id, items.c.seq == seq))
        ).one()


# --- R14, R15: a final negative report is an error everywhere ------------------------


@pytest.mark.parametrize(("code", "reason"), [(2, "undeliverable"), (16, "smsc_rejected")])
def test_r14_r15_a_final_negative_report_makes_the_pair_an_error_in_every_view(ctx, code, reason):
    d = sent_delivery(ctx, recipients=3, messages=2)
    balance = accounts.balance(ctx)
    record_dlr(ctx, f"smsops-{d}-2-2", code, at=T0)
    (listed,) = dl.list_deliveries(ctx)
    assert (listed.sent, listed.errors, listed.status) == (5, 1, "partially_sent")
    assert listed.tickets_used == 6  # the SMSC took it: its ticket was spent, no refund
    assert accounts.balance(ctx) == balance
    errors = dl.delivery_items(ctx, d, failed_only=True)
    assert errors[["seq", "message_no", "status", "error"]].values.tolist() == [
        [2, 2, "error", reason]
    ]
    pairs = dl.failed_pairs(ctx, d)  # R15: the resend repairs exactly that pair
    assert pairs[["phone", "message_no"]].values.tolist() == [[e164(2), 2]]
    accounts.add_tickets(ctx, 1)
    resend = dl.resend_bulk(ctx, d)
    assert (resend.recipients, resend.tickets_needed) == (1, 1)
    dispatch(ctx, resend.delivery_id)
    assert dl.failed_pairs(ctx, d).empty  # repaired: a second resend sends nothing
    record_dlr(ctx, f"smsops-{resend.delivery_id}-2-2", code, at=T0 + timedelta(minutes=1))
    assert len(dl.failed_pairs(ctx, d)) == 1  # the repair failed too: still to repair


@pytest.mark.parametrize("code", [1, 8])
def test_r14_a_delivered_or_smsc_accepted_report_settles_outcome_unknown_as_sent(ctx, code):
    d = sent_delivery(ctx, recipients=2)
    set_item(ctx, d, 2, status="error", error="outcome_unknown")
    assert dl.list_deliveries(ctx)[0].errors == 1
    record_dlr(ctx, f"smsops-{d}-2-1", code, at=T0)
    (listed,) = dl.list_deliveries(ctx)
    assert (listed.sent, listed.errors, listed.status) == (2, 0, "sent")
    assert dl.delivery_items(ctx, d)["status"].tolist() == ["sent", "sent"]
    assert dl.delivery_items(ctx, d, failed_only=True).empty


def test_r14_a_negative_report_that_lands_before_dispatch_records_the_send_still_counts(ctx):
    d = sent_delivery(ctx, recipients=2)
    set_item(ctx, d, 1, status="sending")  # the report came first: still on its way
    record_dlr(ctx, f"smsops-{d}-1-1", 2, at=T0)
    assert dl.delivery_items(ctx, d)["status"].tolist() == ["pending", "sent"]
    set_item(ctx, d, 1, status="sent")  # dispatch records Kannel's answer afterwards
    assert dl.list_deliveries(ctx)[0].errors == 1


def test_r14_deliveries_show_json_items_carry_the_report(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'smsops.db'}"
    ctx = Context.open(Settings(database_url=url, outbox=tmp_path / "outbox.jsonl"))
    d = sent_delivery(ctx, recipients=2)
    record_dlr(ctx, f"smsops-{d}-1-1", 1, at=T0)
    record_dlr(ctx, f"smsops-{d}-2-1", 16, at=T0)
    ctx.close()
    env = {"SMSOPS_DATABASE_URL": url, "SMSOPS_OUTBOX": str(tmp_path / "outbox.jsonl")}
    runner = CliRunner()
    shown = runner.invoke(app, ["deliveries", "show", str(d), "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert [(i["status"], i["error"], i["dlr_status"], i["dlr_at"]) for i in doc["items"]] == [
        ("sent", None, "delivered", "2026-12-01T10:00:00+09:00"),
        ("error", "smsc_rejected", "smsc_rejected", "2026-12-01T10:00:00+09:00"),
    ]
    assert (doc["delivery"]["sent"], doc["delivery"]["errors"]) == (1, 1)
    errors = runner.invoke(app, ["deliveries", "errors", str(d), "--json"], env=env)
    assert [e["error"] for e in json.loads(errors.stdout)["errors"]] == ["smsc_rejected"]


# --- R14: whose report is it ----------------------------------------------------------


def test_r14_a_final_state_is_never_overwritten_by_an_older_or_interim_report(ctx):
    d = sent_delivery(ctx, recipients=1)
    key = f"smsops-{d}-1-1"
    assert record_dlr(ctx, key, 8, at=T0 + timedelta(seconds=5)).recorded
    assert not record_dlr(ctx, key, 4, at=T0).recorded  # an older interim one
    assert record_dlr(ctx, key, 2, at=T0 + timedelta(seconds=10)).recorded
    assert not record_dlr(ctx, key, 1, at=T0 + timedelta(seconds=7)).recorded  # older final
    assert not record_dlr(ctx, key, 8, at=T0 + timedelta(seconds=20)).recorded  # interim
    row = item(ctx, d, 1)
    assert row.dlr_status == "undeliverable"
    assert record_dlr(ctx, key, 1, at=T0 + timedelta(seconds=30)).recorded  # newer final
    assert item(ctx, d, 1).dlr_status == "delivered"


def test_r14_a_report_whose_ref_is_not_the_recorded_one_is_refused(ctx):
    d = sent_delivery(ctx, recipients=1)
    key = f"smsops-{d}-1-1"
    record_dlr(ctx, key, 8, at=T0, ref="smsc-42")
    with pytest.raises(ReportRefused, match="another message"):
        record_dlr(ctx, key, 2, at=T0 + timedelta(seconds=1), ref="smsc-43")
    assert item(ctx, d, 1).dlr_status == "smsc_accepted"
    assert record_dlr(ctx, key, 1, at=T0 + timedelta(seconds=2), ref="smsc-42").recorded


@pytest.mark.parametrize("code", [-1, 0, 32, 1 | 64, 1 << 20])
def test_r14_an_unknown_report_type_is_refused(ctx, code):
    d = sent_delivery(ctx, recipients=1)
    with pytest.raises(InputError, match="unknown report type"):
        record_dlr(ctx, f"smsops-{d}-1-1", code)
    assert item(ctx, d, 1).dlr_status is None


@pytest.fixture
def two_installations(tmp_path: Path) -> Iterator[tuple[Context, Context]]:
    def open_one(name: str) -> Context:
        return Context.open(
            Settings(
                database_url=f"sqlite:///{tmp_path / name}.db",
                outbox=tmp_path / f"{name}.jsonl",
                receiver_token=SecretStr(TOKEN),
            )
        )

    a, b = open_one("a"), open_one("b")
    yield a, b
    a.close()
    b.close()


def test_r14_reports_for_two_databases_behind_one_receiver_never_overwrite_each_other(
    two_installations, caplog
):
    a, b = two_installations
    da, db = sent_delivery(a), sent_delivery(b)
    assert da == db  # the same message keys in both databases
    ia, ib = installation_id(a), installation_id(b)
    assert ia != ib and installation_id(a) == ia  # made once, kept
    with Receiver(a) as receiver, caplog.at_level(logging.WARNING, "smsops.receiver"):

        def dlr(inst: str, status: str = "2") -> int:
            params = {"token": TOKEN, "inst": inst, "key": f"smsops-{da}-1-1", "status": status}
            return httpx.get(f"{receiver.url}/dlr", params=params, timeout=10).status_code

        assert dlr(ib) == 409  # b's report, sent to a's receiver
        assert item(a, da, 1).dlr_status is None
        assert "another installation" in caplog.text
        assert dlr(ia, "-1") == 400  # unknown report types: refused and logged
        assert dlr(ia, "32") == 400
        assert caplog.text.count("receiver: refused /dlr") == 3
        assert item(a, da, 1).dlr_status is None
        assert dlr(ia) == 200
    assert item(a, da, 1).dlr_status == "undeliverable"
    assert item(b, db, 1).dlr_status is None


def test_r14_kannel_asks_for_smsc_accepted_reports_and_names_the_installation(tmp_path: Path):
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery")

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'smsops.db'}",
        gateway="kannel",
        kannel_url="http://127.0.0.1:9/cgi-bin/sendsms",
        kannel_user="smsops",
        kannel_password=SecretStr("pw"),
        receiver_token=SecretStr(TOKEN),
    )
    gateway = KannelGateway(
        settings, dlr_url="http://127.0.0.1:13080/dlr", transport=httpx.MockTransport(handle)
    )
    batch = pd.DataFrame(
        {
            "delivery_id": 1,
            "seq": [1],
            "message_no": 1,
            "phone": [e164(1)],
            "text": "テスト",
            "idempotency_key": ["smsops-1-1-1"],
        }
    )
    try:
        gateway.send(batch)
    finally:
        gateway.close()
    ctx = Context.open(settings)
    inst = installation_id(ctx)
    ctx.close()
    (request,) = seen
    assert int(request.headers["x-kannel-dlr-mask"]) & 8  # smsc_accepted settles unknowns
    assert request.headers["x-kannel-dlr-url"] == (
        f"http://127.0.0.1:13080/dlr?token={TOKEN}&inst={inst}"
        "&key=smsops-1-1-1&status=%d&at=%T&ref=%F&reason=%A"
    )
