"""Kannel options an operator expects (#17): a validity period (X-Kannel-Validity), the
requests in flight (SMSOPS_KANNEL_CONCURRENCY), and the carrier's reason kept with each
delivery report (Kannel's %A in the dlr-url), through the real receiver over HTTP."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from integration.kannel import Kannel, missing, offline_settings, wait_for
from pydantic import SecretStr
from sqlalchemy import and_, select
from support import add_users, e164, mobile

from smsops.errors import ConfigError
from smsops.gateways import make_gateway
from smsops.gateways.kannel import KannelGateway
from smsops.receiver import Receiver
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.services.inbound import carrier_reason
from smsops.settings import Settings
from smsops.store import read
from smsops.store.schema import items

TOKEN = secrets.token_urlsafe(32)


def batch_of(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "delivery_id": 1,
            "seq": range(1, n + 1),
            "message_no": 1,
            "phone": [e164(i) for i in range(1, n + 1)],
            "text": "テスト",
            "idempotency_key": [f"smsops-1-{i}-1" for i in range(1, n + 1)],
        }
    )


def sent_requests(gateway: KannelGateway, seen: list[httpx.Request], n: int = 1) -> None:
    try:
        gateway.send(batch_of(n))
    finally:
        gateway.close()
    assert len(seen) == n


def recording() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery")

    return httpx.MockTransport(handle), seen


# --- validity ------------------------------------------------------------------------


def test_validity_header_is_absent_by_default_and_carries_the_minutes_when_set():
    transport, seen = recording()
    sent_requests(KannelGateway(offline_settings(), transport=transport), seen)
    assert "x-kannel-validity" not in seen[0].headers  # the SMSC's own default

    transport, seen = recording()
    settings = offline_settings(kannel_validity_minutes=90)
    sent_requests(KannelGateway(settings, transport=transport), seen)
    assert seen[0].headers["x-kannel-validity"] == "90"  # Kannel's unit: minutes
    assert seen[0].url.query == b""  # a header, like every other option


def test_validity_is_read_from_the_environment_and_a_bad_one_is_one_line(monkeypatch):
    monkeypatch.setenv("SMSOPS_KANNEL_VALIDITY_MINUTES", "120")
    assert Settings().kannel_validity_minutes == 120
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("SMSOPS_KANNEL_VALIDITY_MINUTES", bad)
        with pytest.raises(ConfigError, match="SMSOPS_KANNEL_VALIDITY_MINUTES") as refused:
            Settings()
        assert "\n" not in str(refused.value)


# --- concurrency ---------------------------------------------------------------------


class Gate(httpx.AsyncBaseTransport):
    """Holds every request until released; notes the most held at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.02)  # long enough for every worker to have a request out
        self.now -= 1
        return httpx.Response(202, text="0: Accepted for delivery")


@pytest.mark.parametrize("concurrency", [1, 9])
def test_kannel_concurrency_setting_reaches_the_gateway_and_bounds_requests_in_flight(
    monkeypatch, concurrency
):
    monkeypatch.setenv("SMSOPS_KANNEL_CONCURRENCY", str(concurrency))
    settings = offline_settings()
    gateway = make_gateway(settings)
    assert isinstance(gateway, KannelGateway) and gateway.concurrency == concurrency
    gateway.close()
    gate = Gate()
    gateway = KannelGateway(settings, transport=gate)
    try:
        gateway.send(batch_of(30))
    finally:
        gateway.close()
    assert gate.most == concurrency


def test_kannel_concurrency_defaults_to_4_and_out_of_range_is_one_clear_line(monkeypatch):
    assert Settings().kannel_concurrency == 4
    for bad in ("0", "65"):
        monkeypatch.setenv("SMSOPS_KANNEL_CONCURRENCY", bad)
        with pytest.raises(ConfigError, match=f"^SMSOPS_KANNEL_CONCURRENCY='{bad}': ") as refused:
            Settings()
        assert "\n" not in str(refused.value)


# --- the carrier's reason ------------------------------------------------------------


def test_the_dlr_url_asks_kannel_for_the_smscs_answer():
    transport, seen = recording()
    settings = offline_settings(receiver_token=TOKEN)
    gateway = KannelGateway(
        settings, dlr_url="http://127.0.0.1:13080/dlr", transport=transport, installation="i1"
    )
    sent_requests(gateway, seen)
    url = seen[0].headers["x-kannel-dlr-url"]
    assert url.endswith("&reason=%A")  # %A: the SMSC's reply with the report
    assert "&status=%d&at=%T&ref=%F&" in url


@pytest.fixture
def rctx(tmp_path: Path) -> Iterator[Context]:
    ctx = Context.open(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'smsops.db'}",
            outbox=tmp_path / "outbox.jsonl",
            receiver_token=SecretStr(TOKEN),
        )
    )
    yield ctx
    ctx.close()


def report_of(ctx: Context, delivery_id: int, seq: int) -> tuple[object, ...]:
    this = and_(items.c.delivery_id == delivery_id, items.c.seq == seq, items.c.message_no == 1)
    with read(ctx.engine) as conn:
        row = conn.execute(select(items.c.dlr_status, items.c.dlr_reason).where(this)).one()
    return tuple(row)


def test_a_report_with_the_carriers_reason_keeps_it_through_the_receiver(rctx):
    add_users(rctx, [mobile(i) for i in range(1, 5)])
    accounts.add_tickets(rctx, 4)
    d = dl.create_bulk(rctx, dl.preview_bulk(rctx, ["セールのお知らせ"])).delivery_id
    assert dispatch(rctx, d).sent == 4
    receipt = (
        "id:0123456789 sub:001 dlvrd:000 submit date:2612011000 done date:2612011005 "
        "stat:UNDELIV err:001 text:セールのお知らせ"
    )
    with Receiver(rctx) as receiver:

        def dlr(seq: int, status: str, reason: str | None = None, **kw: str) -> int:
            params = {"token": TOKEN, "key": f"smsops-{d}-{seq}-1", "status": status, **kw}
            if reason is not None:
                params["reason"] = reason  # URL-encoded, as Kannel sends %A
            return httpx.get(f"{receiver.url}/dlr", params=params, timeout=10).status_code

        assert dlr(1, "2", receipt, at="1796000000") == 200  # an SMPP receipt
        assert dlr(2, "16", "NACK/0x00000045/Submit failed") == 200  # the SMSC refused it
        assert dlr(3, "1") == 200  # a report without a reason (asked for before #17)
        assert dlr(4, "2", "  エラー\n  番号なし ") == 200  # UTF-8, on one line
        # A repeat of the same state changes nothing, not even the reason.
        assert dlr(1, "2", "stat:UNDELIV err:999", at="1796000100") == 200

    assert report_of(rctx, d, 1) == ("undeliverable", "stat:UNDELIV err:001")
    assert report_of(rctx, d, 2) == ("smsc_rejected", "NACK/0x00000045/Submit failed")
    assert report_of(rctx, d, 3) == ("delivered", None)
    assert report_of(rctx, d, 4) == ("undeliverable", "エラー 番号なし")
    shown = dl.delivery_items(rctx, d)  # what notebooks and the errors list read
    assert shown["dlr_reason"].tolist()[:2] == [
        "stat:UNDELIV err:001",
        "NACK/0x00000045/Submit failed",
    ]


def test_the_carriers_reason_is_cut_to_its_column_and_an_empty_one_is_none():
    assert carrier_reason("x" * 200) == "x" * 64
    assert carrier_reason("") is None and carrier_reason("   ") is None
    assert carrier_reason("STAT:DELIVRD ERR:000") == "stat:DELIVRD err:000"


# --- a real Kannel -------------------------------------------------------------------


@pytest.mark.skipif(bool(missing()), reason="Kannel not installed (apt-get install kannel)")
def test_a_real_kannel_takes_the_validity_and_sends_the_smscs_answer_with_each_report(tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'smsops.db'}",
        gateway="kannel",
        receiver_token=SecretStr(TOKEN),
        kannel_validity_minutes=60,
        kannel_concurrency=2,
    )
    ctx = Context.open(settings)
    with (
        Receiver(ctx) as receiver,
        Kannel(tmp_path / "kannel", mo_url=f"{receiver.url}/mo", token=TOKEN) as kannel,
    ):
        ctx.close()
        ctx = Context.open(
            settings.model_copy(
                update={
                    "kannel_url": kannel.sendsms_url,
                    "kannel_user": kannel.user,
                    "kannel_password": SecretStr(kannel.password),
                    "kannel_dlr_url": f"{receiver.url}/dlr",
                }
            )
        )
        receiver.server.ctx = ctx
        add_users(ctx, [mobile(i) for i in range(1, 4)])
        accounts.add_tickets(ctx, 3)
        d = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["セールのお知らせ"])).delivery_id
        assert dispatch(ctx, d).sent == 3  # Kannel took every message with its validity
        wait_for(
            "every delivery report",
            lambda: [report_of(ctx, d, s)[0] for s in (1, 2, 3)] == ["delivered"] * 3,
            timeout=15,
        )
        reasons = [report_of(ctx, d, s)[1] for s in (1, 2, 3)]
    ctx.close()
    # fakesmsc's "delivered" reports come with an empty %A: no reason, not an empty one
    assert reasons == [None, None, None]
