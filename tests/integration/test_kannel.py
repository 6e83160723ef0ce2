"""The kannel gateway against a real Kannel (bearerbox + smsbox + fakesmsc on loopback),
delivery reports and replies through the receiver, and the answer mapping (R11, R15, R16).

The last section needs no Kannel: answers Kannel cannot be made to give on demand (5xx,
timeouts) come from httpx's MockTransport.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
from clocks import Clock
from integration.kannel import (
    Kannel,
    RecordingTransport,
    free_port,
    max_in_any_second,
    missing,
    offline_settings,
    wait_for,
)
from pydantic import SecretStr
from sqlalchemy import func, select
from support import add_users, e164, mobile
from typer.testing import CliRunner

from smsops.cli import app
from smsops.errors import ConfigError, InputError, NotFoundError
from smsops.gateways import make_gateway
from smsops.gateways.kannel import KannelGateway
from smsops.gateways.pacing import RateLimiter
from smsops.receiver import Receiver, decode_text
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import people
from smsops.services.context import Context
from smsops.services.dispatch import dispatch, dispatch_due
from smsops.services.inbound import handle_reply, is_stop_request, record_dlr
from smsops.settings import Settings
from smsops.store import read
from smsops.store.schema import items, ledger, optouts

needs_kannel = pytest.mark.skipif(
    bool(missing()),
    reason=f"Kannel not installed ({', '.join(missing())}): apt-get install kannel kannel-extras",
)
MSGS = [
    "冬のセール開始！🎍 ｶﾀｶﾅ ＡＢＣ 100% off + 送料無料",
    "詳細は https://example.jp/?a=1&b=2 で\n配信停止は「停止」と返信",
]
TOKEN = secrets.token_urlsafe(32)  # SMSOPS_RECEIVER_TOKEN of this session's receivers


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """One endpoint for the session; each test points it at its own store."""
    path = tmp_path_factory.mktemp("receiver") / "idle.db"
    settings = Settings(database_url=f"sqlite:///{path}", receiver_token=TOKEN)  # type: ignore[arg-type]
    idle = Context.open(settings)
    with Receiver(idle) as server:
        yield server
    idle.close()


@pytest.fixture(scope="session")
def kannel(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Kannel]:
    if missing():
        pytest.skip("Kannel not installed")
    with Kannel(tmp_path_factory.mktemp("kannel"), mo_url=f"{receiver.url}/mo", token=TOKEN) as k:
        yield k


def kannel_settings(tmp_path: Path, kannel: Kannel, **kw: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path / 'smsops.db'}",
        "gateway": "kannel",
        "kannel_url": kannel.sendsms_url,
        "kannel_user": kannel.user,
        "kannel_password": kannel.password,
        "receiver_token": TOKEN,
        "chunk_size": 7,
    }
    return Settings(**{**values, **kw})  # type: ignore[arg-type]


def receiver_settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'smsops.db'}", receiver_token=TOKEN)  # type: ignore[arg-type]


def gateway_factory(receiver: Receiver, **kw: object) -> Callable[[Settings], KannelGateway]:
    return lambda s: KannelGateway(s, dlr_url=f"{receiver.url}/dlr", **kw)  # type: ignore[arg-type]


@pytest.fixture
def kctx(tmp_path: Path, kannel: Kannel, receiver: Receiver) -> Iterator[Context]:
    """A fresh installation sending through the session's Kannel, its reports and
    replies landing in its own store."""
    ctx = Context.open(kannel_settings(tmp_path, kannel), gateway_factory=gateway_factory(receiver))
    receiver.server.ctx = ctx
    yield ctx
    ctx.close()


def create(ctx: Context, messages: list[str] = MSGS) -> dl.Created:
    """A confirmed bulk delivery to every stored user (queued, not yet sent)."""
    return dl.create_bulk(ctx, dl.preview_bulk(ctx, messages))


def expected_pairs(phones: list[str], messages: list[str]) -> Counter[tuple[str, str]]:
    return Counter((p, m) for p in phones for m in messages)


def dlr_statuses(ctx: Context, delivery_id: int) -> list[str | None]:
    with read(ctx.engine) as conn:
        return list(
            conn.execute(
                select(items.c.dlr_status)
                .where(items.c.delivery_id == delivery_id)
                .order_by(items.c.seq, items.c.message_no)
            ).scalars()
        )


# --- a real Kannel -------------------------------------------------------------------


@needs_kannel
def test_every_message_arrives_at_the_fake_smsc_with_its_exact_japanese_text(kctx, kannel):
    add_users(kctx, [mobile(i) for i in range(1, 7)])
    accounts.add_tickets(kctx, 12)
    before = len(kannel.received())
    result = dispatch(kctx, create(kctx).delivery_id)
    assert (result.status, result.sent, result.errors) == ("sent", 12, 0)
    got = kannel.wait_received(before + 12)[before:]
    assert Counter((r.to, r.text) for r in got) == expected_pairs(
        [e164(i) for i in range(1, 7)], MSGS
    )
    assert accounts.balance(kctx) == 0


@needs_kannel
def test_delivery_reports_mark_each_message_delivered_in_history(kctx, kannel):
    add_users(kctx, [mobile(i) for i in range(1, 4)])
    accounts.add_tickets(kctx, 6)
    delivery_id = create(kctx).delivery_id
    dispatch(kctx, delivery_id)
    wait_for(
        "every delivery report",
        lambda: dlr_statuses(kctx, delivery_id) == ["delivered"] * 6,
        timeout=15,
    )
    with read(kctx.engine) as conn:
        rows = conn.execute(
            select(items.c.status, items.c.dlr_at, items.c.gateway_ref).where(
                items.c.delivery_id == delivery_id
            )
        ).all()
    assert all(r.status == "sent" and r.dlr_at is not None and r.gateway_ref for r in rows)


@needs_kannel
def test_r16_stop_reply_from_fakesmsc_lands_in_optout_list_and_next_delivery_skips_it(kctx, kannel):
    phones = [mobile(i) for i in range(1, 4)]
    add_users(kctx, phones)
    accounts.add_tickets(kctx, 12)
    dispatch(kctx, create(kctx, MSGS[:1]).delivery_id)

    kannel.send_mo(e164(3), "ありがとう")  # not a stop request: ignored
    kannel.send_mo(e164(2).removeprefix("+"), "　配信停止　")  # as Japanese SMSCs send it
    wait_for("the opt-out", lambda: e164(2) in people.load_optouts(kctx), timeout=15)
    with read(kctx.engine) as conn:
        assert conn.execute(select(optouts.c.phone, optouts.c.source)).all() == [(e164(2), "reply")]

    preview = dl.preview_bulk(kctx, MSGS[:1])
    assert preview.recipients == 2 and preview.excluded == {"opted_out": 1}
    before = len(kannel.received())
    result = dispatch(kctx, dl.create_bulk(kctx, preview).delivery_id)
    assert result.sent == 2
    got = kannel.wait_received(before + 2)[before:]
    assert sorted(r.to for r in got) == [e164(1), e164(3)]


@needs_kannel
def test_r11_messages_kannel_rejects_carry_its_reason_and_are_refunded(tmp_path, kannel, receiver):
    settings = kannel_settings(tmp_path, kannel, kannel_password="wrong")
    ctx = Context.open(settings, gateway_factory=gateway_factory(receiver))
    add_users(ctx, [mobile(i) for i in range(1, 4)])
    accounts.add_tickets(ctx, 10)
    result = dispatch(ctx, create(ctx).delivery_id)
    assert (result.status, result.sent, result.errors) == ("failed", 0, 6)
    errors = dl.delivery_items(ctx, result.delivery_id)["error"]
    assert set(errors) == {"rejected: Authorization failed for sendsms"}
    assert accounts.balance(ctx) == 10  # debited 6, refunded 6
    ctx.close()


def batch_of(n: int, delivery_id: int = 1) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "delivery_id": delivery_id,
            "seq": range(1, n + 1),
            "message_no": 1,
            "phone": [e164(i) for i in range(1, n + 1)],
            "text": "テスト",
            "idempotency_key": [f"smsops-{delivery_id}-{i}-1" for i in range(1, n + 1)],
        }
    )


@needs_kannel
def test_rate_cap_is_never_exceeded_in_any_second(tmp_path, kannel):
    transport = RecordingTransport()
    gateway = KannelGateway(
        kannel_settings(tmp_path, kannel, rate_limit=40), concurrency=8, transport=transport
    )
    before = len(kannel.received())
    try:
        results = gateway.send(batch_of(100))
    finally:
        gateway.close()
    assert set(results["status"]) == {"sent"}
    times = [t for t, _ in transport.sent]
    assert max_in_any_second(times) <= 40
    assert times[-1] - times[0] >= 1.5  # 40 in the first second, 40 in the next, 20 more
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.01  # spread: no bursts
    kannel.wait_received(before + 100)


@needs_kannel
def test_kannel_password_never_reaches_logs_urls_or_reprs(tmp_path, kannel, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    settings = kannel_settings(tmp_path, kannel)
    transport = RecordingTransport()
    gateway = KannelGateway(settings, dlr_url=f"{receiver.url}/dlr", transport=transport)
    try:
        assert set(gateway.send(batch_of(3, delivery_id=999))["status"]) == {"sent"}
    finally:
        gateway.close()
    assert "HTTP Request: POST" in caplog.text  # httpx did log each request…
    for secret in (kannel.password, TOKEN):
        assert secret not in caplog.text  # …without the password or the receiver's token
        assert all(secret not in url for _, url in transport.sent)
        assert secret not in repr(gateway) + repr(settings) + str(settings)


@needs_kannel
def test_receiver_refuses_bad_callbacks(receiver, kctx):
    get = lambda path: httpx.get(f"{receiver.url}{path}", timeout=5).status_code  # noqa: E731
    assert get("/health") == 200
    assert get(f"/dlr?token={TOKEN}&key=bogus&status=1") == 400
    assert get(f"/dlr?token={TOKEN}&key=smsops-1-1-1&status=x") == 400
    assert get(f"/dlr?token={TOKEN}&key=smsops-999-1-1&status=1") == 404
    assert get(f"/mo?token={TOKEN}&text=STOP") == 400
    assert get("/elsewhere") == 404
    # Without the token the answer is 403 before anything is read: it tells nothing.
    assert get("/dlr?key=bogus&status=1") == 403
    assert get("/mo?text=STOP") == 403


# --- Kannel of its own: taken down half-way; the CLI -----------------------------------


class KillsKannelAfterFirstChunk:
    """The real gateway; once the first chunk is in (and at the fake SMSC), Kannel dies."""

    name = "kannel"
    record = None  # Kannel keeps no record of the keys it accepted

    def __init__(self, inner: KannelGateway, kannel: Kannel) -> None:
        self.inner, self.kannel, self.calls = inner, kannel, 0

    def send(self, batch: pd.DataFrame, hand_off=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        results = self.inner.send(batch, hand_off)
        self.calls += 1
        if self.calls == 1:
            self.kannel.wait_received(len(batch))
            self.kannel.kill()
        return results

    def accepted_keys(self, delivery_id: int) -> set[str] | None:
        return self.inner.accepted_keys(delivery_id)

    def close(self) -> None:
        self.inner.close()


@needs_kannel
def test_r11_kannel_down_midway_pauses_and_the_rest_goes_out_once_it_is_back(tmp_path):
    """An outage is a pause, not a failure (issue 17): the pairs Kannel never took stay
    pending with their tickets, and the delivery goes on from there once Kannel is back."""
    idle = Context.open(receiver_settings(tmp_path))
    with (
        Receiver(idle) as receiver,
        Kannel(tmp_path / "kannel", mo_url=f"{receiver.url}/mo", token=TOKEN) as k,
    ):
        ctx = Context.open(
            kannel_settings(tmp_path, k, chunk_size=8, pause_seconds=0.1),
            gateway_factory=lambda s: KillsKannelAfterFirstChunk(
                KannelGateway(s, dlr_url=f"{receiver.url}/dlr", backoff=0.05), k
            ),
        )
        receiver.server.ctx = ctx
        add_users(ctx, [mobile(i) for i in range(1, 13)])
        accounts.add_tickets(ctx, 30)
        first = dispatch(ctx, create(ctx).delivery_id)

        # Recipients 1-4 (the first chunk) went out; 5-12 found Kannel down: paused.
        assert (first.status, first.sent, first.errors) == ("paused", 8, 0)
        assert first.reason is not None and "could not be reached" in first.reason
        detail = dl.delivery_items(ctx, first.delivery_id)
        waiting = detail[detail["status"] == "pending"]
        assert sorted(set(waiting["seq"])) == list(range(5, 13)) and len(waiting) == 16
        assert len(k.received()) == 8
        # R11: 24 debited once, none refunded: the 16 keep their tickets for the resume.
        with read(ctx.engine) as conn:
            moves = dict(
                conn.execute(
                    select(ledger.c.kind, func.sum(ledger.c.amount))
                    .where(ledger.c.delivery_id == first.delivery_id)
                    .group_by(ledger.c.kind)
                ).all()
            )
        assert moves == {"debit": -24}

        # Kannel is back: dispatch-due (after the pause) sends exactly the 16 pairs left.
        k.start()
        ctx.gateway_factory = gateway_factory(receiver)
        ctx.clock = Clock(datetime.now(UTC) + timedelta(seconds=1))  # the pause is over (#14)
        (second,) = dispatch_due(ctx)
        assert (second.delivery_id, second.status, second.sent) == (first.delivery_id, "sent", 24)
        got = k.wait_received(24)
        time.sleep(0.5)  # nothing more arrives
        assert len(k.received()) == 24
        assert Counter((r.to, r.text) for r in got[8:]) == expected_pairs(
            [e164(i) for i in range(5, 13)], MSGS
        )
        assert Counter((r.to, r.text) for r in got) == expected_pairs(
            [e164(i) for i in range(1, 13)], MSGS
        )
        assert accounts.balance(ctx) == 30 - 24
        ctx.close()
    idle.close()


@needs_kannel
def test_r16_stop_reply_sent_while_the_receiver_is_down_lands_once_when_it_is_back(tmp_path):
    port = free_port()
    ctx = Context.open(receiver_settings(tmp_path))
    with Kannel(
        tmp_path / "kannel", mo_url=f"http://127.0.0.1:{port}/mo", token=TOKEN, http_retry_delay=1
    ) as k:
        k.send_mo(e164(7), "停止")  # nobody listens on the get-url's port
        wait_for("smsbox to fail the get-url once", lambda: k.failed_callbacks() >= 1, timeout=15)
        assert people.load_optouts(ctx) == []
        with Receiver(ctx, port=port):  # back, on the same port
            wait_for("the retried reply", lambda: e164(7) in people.load_optouts(ctx), timeout=30)
            failed = k.failed_callbacks()
            time.sleep(3)  # Kannel's http-queue-delay is 1 s: a retry still queued comes by now
        assert k.failed_callbacks() == failed  # once answered, not asked again
    with read(ctx.engine) as conn:
        rows = conn.execute(select(optouts.c.phone, optouts.c.source)).all()
    assert rows == [(e164(7), "reply")]  # on the list exactly once
    ctx.close()


def smsops(
    *args: str, env: dict[str, str], code: int = 0, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "smsops.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == code, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


@needs_kannel
def test_cli_send_through_kannel_and_a_stop_reply_through_smsops_receiver(tmp_path):
    port = free_port()
    database = f"sqlite:///{tmp_path / 'smsops.db'}"
    with Kannel(tmp_path / "kannel", mo_url=f"http://127.0.0.1:{port}/mo") as k:
        env = {
            **os.environ,
            "SMSOPS_DATABASE_URL": database,
            "SMSOPS_GATEWAY": "kannel",
            "SMSOPS_KANNEL_URL": k.sendsms_url,
            "SMSOPS_KANNEL_USER": k.user,
            "SMSOPS_KANNEL_PASSWORD": k.password,
            "SMSOPS_RECEIVER_TOKEN": k.token,
        }
        reports = "kannel_dlr_url" in Settings.model_fields  # once Settings has the field
        if reports:
            env["SMSOPS_KANNEL_DLR_URL"] = f"http://127.0.0.1:{port}/dlr"
        server = subprocess.Popen(
            [sys.executable, "-m", "smsops.cli", "receiver", "--port", str(port), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            urls = json.loads(server.stdout.readline())
            assert urls["mo_url"] == f"http://127.0.0.1:{port}/mo"
            smsops("tickets", "add", "5", "--json", env=env)
            sent = json.loads(
                smsops(
                    "send", mobile(1), "-m", "ご来店ありがとうございました", "--json", env=env
                ).stdout
            )
            assert (sent["status"], sent["sent"]) == ("sent", 1)
            assert k.wait_received(1)[0].text == "ご来店ありがとうございました"

            k.send_mo(e164(1), "ＳＴＯＰ")
            ctx = Context.open(Settings(database_url=database))
            wait_for("the opt-out", lambda: e164(1) in people.load_optouts(ctx), timeout=15)
            if reports:
                wait_for(
                    "the delivery report",
                    lambda: dlr_statuses(ctx, sent["delivery_id"]) == ["delivered"],
                    timeout=15,
                )
            ctx.close()
            refused = smsops("send", mobile(1), "-m", "再送", env=env, code=1)
            assert "R16" in refused.stderr
        finally:
            server.terminate()
            _, log = server.communicate(timeout=15)
    assert server.returncode == 0
    assert "reply from 090-****-0001: opted_out" in log
    assert "9010000001" not in log  # numbers in its log are masked
    assert k.token not in log


# --- no Kannel needed --------------------------------------------------------------------


def test_cli_receiver_on_a_busy_port_is_one_clear_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            app,
            ["receiver", "--port", str(port)],
            env={
                "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}",
                "SMSOPS_RECEIVER_TOKEN": TOKEN,
            },
        )
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_cli_receiver_without_a_token_refuses_to_start_on_any_address(tmp_path, host):
    port = free_port()
    env = {**os.environ, "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}"}
    env.pop("SMSOPS_RECEIVER_TOKEN", None)
    # A subprocess with a deadline: a receiver that did start would serve for ever.
    for token in (None, ""):
        if token is not None:
            env["SMSOPS_RECEIVER_TOKEN"] = token
        refused = smsops(
            "receiver", "--host", host, "--port", str(port), env=env, code=1, timeout=30
        )
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "the receiver needs SMSOPS_RECEIVER_TOKEN" in lines[0], lines
        assert refused.stdout == ""


def test_a_weak_or_unsafe_receiver_token_is_refused_without_showing_it(tmp_path):
    for token in ("short", "a" * 15 + "%", "with space and more than 16"):
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", receiver_token=token)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="SMSOPS_RECEIVER_TOKEN must be") as refused:
            Receiver(Context.open(settings))
        assert token not in str(refused.value)


def scripted(answers: list[object]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering each request with the next status code or exception."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        code, text = answer if isinstance(answer, tuple) else (answer, "")
        return httpx.Response(code, text=text)

    return httpx.MockTransport(handle), seen


@pytest.mark.parametrize(
    ("answers", "status", "error", "attempts"),
    [
        ([(202, "0: Accepted for delivery")], "sent", None, 1),
        ([(202, "3: Queued for later delivery")], "sent", None, 1),
        ([503, 500, 202], "sent", None, 3),
        ([httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), 202], "sent", None, 3),
        ([503], "error", "gateway_unavailable", 4),
        ([httpx.ConnectError("refused")], "error", "gateway_unavailable", 4),
        (
            [(400, "Missing receiver number, rejected")],
            "error",
            "rejected: Missing receiver number, rejected",
            1,
        ),
        (
            [(403, "Not routable. Do not try again.")],
            "error",
            "rejected: Not routable. Do not try again",
            1,
        ),
        ([httpx.ReadTimeout("no answer")], "error", "outcome_unknown", 1),
        ([httpx.RemoteProtocolError("dropped")], "error", "outcome_unknown", 1),
    ],
)
def test_kannel_answers_are_mapped_and_only_safe_failures_retried(answers, status, error, attempts):
    transport, seen = scripted(answers)
    gateway = KannelGateway(offline_settings(), backoff=0.001, transport=transport)
    try:
        result = gateway.send(batch_of(1)).iloc[0]
    finally:
        gateway.close()
    assert (result["status"], result["error"]) == (status, error)
    assert len(seen) == attempts  # a lost answer is never retried: it may have been sent


def test_requests_carry_text_in_ucs2_terms_and_credentials_only_in_headers():
    transport, seen = scripted([202])
    settings = offline_settings(kannel_from="SMSOPS", receiver_token=TOKEN)
    gateway = KannelGateway(
        settings, dlr_url="http://127.0.0.1:13080/dlr", transport=transport, installation="inst1"
    )
    try:
        gateway.send(batch_of(1))
    finally:
        gateway.close()
    (request,) = seen
    assert request.method == "POST" and request.url.query == b""
    assert request.content.decode("utf-8") == "テスト"
    h = request.headers
    assert (h["x-kannel-to"], h["x-kannel-coding"], h["x-kannel-from"]) == (
        "+819010000001",
        "2",
        "SMSOPS",
    )
    assert (h["x-kannel-username"], h["x-kannel-password"]) == ("smsops", "pw")
    assert h["x-kannel-dlr-mask"] == "27"  # delivered, undeliverable, SMSC accepted/rejected
    assert h["x-kannel-dlr-url"] == (
        f"http://127.0.0.1:13080/dlr?token={TOKEN}&inst=inst1&key=smsops-1-1-1"
        "&status=%d&at=%T&ref=%F&reason=%A"
    )


def test_kannel_gateway_is_what_smsops_gateway_kannel_names_and_checks_its_settings():
    gateway = make_gateway(offline_settings())
    assert isinstance(gateway, KannelGateway) and gateway.accepted_keys(1) is None
    gateway.close()
    bad = [
        ({"kannel_user": None}, "SMSOPS_KANNEL_USER and SMSOPS_KANNEL_PASSWORD"),
        ({"kannel_url": "ftp://127.0.0.1/sendsms"}, "not an http"),
        ({"kannel_from": "スマスオプス"}, "SMSOPS_KANNEL_FROM must be ASCII"),
    ]
    for changes, message in bad:
        with pytest.raises(ConfigError, match=message):
            KannelGateway(offline_settings().model_copy(update=changes))
    with pytest.raises(ConfigError, match="must not contain '%'"):
        KannelGateway(offline_settings(), dlr_url="http://127.0.0.1/dlr?x=%41")


def test_a_dlr_url_without_the_receiver_token_is_refused_when_the_gateway_is_built():
    settings = offline_settings(kannel_dlr_url="http://127.0.0.1:13080/dlr")
    with pytest.raises(ConfigError, match="SMSOPS_KANNEL_DLR_URL needs SMSOPS_RECEIVER_TOKEN"):
        KannelGateway(settings)
    with pytest.raises(ConfigError, match="SMSOPS_RECEIVER_TOKEN must be"):
        KannelGateway(settings.model_copy(update={"receiver_token": SecretStr("x%41" * 8)}))
    KannelGateway(offline_settings()).close()  # no reports asked for: no token needed
    gateway = KannelGateway(settings.model_copy(update={"receiver_token": SecretStr(TOKEN)}))
    assert TOKEN not in repr(gateway)
    gateway.close()


def test_an_unavailable_kannel_ends_the_batch_without_trying_every_message():
    transport, seen = scripted([httpx.ConnectError("refused")])
    gateway = KannelGateway(
        offline_settings(), concurrency=4, attempts=3, backoff=0.001, transport=transport
    )
    try:
        results = gateway.send(batch_of(50))
    finally:
        gateway.close()
    assert set(results["error"]) == {"gateway_unavailable"}
    assert len(seen) <= 4 * 3  # only the messages in flight when it went down were tried


def test_rate_limiter_holds_any_one_second_window_to_the_rate():
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    starts = []
    for _ in range(10):
        while (wait := limiter._try()) > 0:
            now[0] += wait
        starts.append(now[0])
    assert max_in_any_second(starts) == 3
    assert all(b - a >= 0.8 / 3 - 1e-9 for a, b in itertools.pairwise(starts))
    assert starts[-1] == pytest.approx(3 * 1.005)  # the 10th: 3 a second (and 5 ms), the cap


@pytest.mark.parametrize(
    "text",
    [
        "停止",
        "配信停止",
        "STOP",
        "stop",
        "Stop",
        "ＳＴＯＰ",
        "ｓｔｏｐ",
        "　停止　",
        " 配信停止。\n",
        "STOP!",
    ],
)
def test_r16_stop_requests_are_recognized_in_any_width_and_case(text):
    assert is_stop_request(text)


@pytest.mark.parametrize("text", ["", "停止しないで", "STOP IT", "ありがとう", "stopp"])
def test_r16_other_replies_are_not_stop_requests(text):
    assert not is_stop_request(text)


def test_r16_stop_reply_adds_the_sender_once_and_other_replies_are_ignored(ctx):
    first = handle_reply(ctx, "819012345678", "停止").to_dict()
    assert {k: first[k] for k in ("action", "phone", "reason")} == {
        "action": "opted_out",
        "phone": "+819012345678",
        "reason": "stop_request",
    }
    assert handle_reply(ctx, "+819012345678", "STOP").reason == "already_opted_out"
    assert handle_reply(ctx, "+819087654321", "了解").reason == "not_a_stop_request"
    assert handle_reply(ctx, "SHOPNEWS", "STOP").reason == "not_a_phone"
    assert people.load_optouts(ctx) == ["+819012345678"]


def test_dlr_final_state_is_never_replaced_by_a_late_interim_report(ctx):
    add_users(ctx, [mobile(1), mobile(2)])
    accounts.add_tickets(ctx, 4)
    delivery_id = dispatch(ctx, create(ctx, MSGS[:1]).delivery_id).delivery_id
    key1, key2 = f"smsops-{delivery_id}-1-1", f"smsops-{delivery_id}-2-1"
    assert record_dlr(ctx, key1, 4).dlr_status == "buffered"
    assert record_dlr(ctx, key1, 1, ref="abc").recorded
    assert record_dlr(ctx, key1, 4).to_dict() == {
        "key": key1,
        "dlr_status": "delivered",
        "recorded": False,
    }
    assert record_dlr(ctx, key2, 2).dlr_status == "undeliverable"
    assert dlr_statuses(ctx, delivery_id) == ["delivered", "undeliverable"]
    with pytest.raises(NotFoundError):
        record_dlr(ctx, f"smsops-{delivery_id}-9-1", 1)
    with pytest.raises(InputError):
        record_dlr(ctx, "not-a-key", 1)
    with pytest.raises(InputError):
        record_dlr(ctx, key1, 0)


@pytest.mark.parametrize(
    ("raw", "coding", "charset", "text"),
    [
        ("停止".encode("utf-16-be"), "2", "UTF-16BE", "停止"),
        ("停止".encode(), "1", "UTF-8", "停止"),
        (b"STOP", "0", "", "STOP"),
        ("停止".encode("shift_jis"), "1", "Shift_JIS", "停止"),
    ],
)
def test_receiver_decodes_replies_by_coding_and_charset(raw, coding, charset, text):
    assert decode_text(raw, coding, charset) == text
