"""Prefect flows sending through a real Kannel (bearerbox + smsbox + fakesmsc), with the
credentials where operations keep them: the environment or a Prefect Secret block.

A flow builds its settings in its own process; the password and the receiver's token
must reach Kannel and the receiver intact (issue 17, item 1), and a run Kannel refuses
must end Failed with Kannel's reason in its state message (item 6).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.kannel import Kannel, missing, wait_for
from prefect.artifacts import Artifact
from prefect.blocks.system import Secret
from prefect.testing.utilities import prefect_test_harness
from sqlalchemy import select
from support import add_users, e164, mobile

from smsops.receiver import Receiver
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.settings import Settings
from smsops.store import read
from smsops.store.schema import items

pytestmark = pytest.mark.skipif(
    bool(missing()), reason="Kannel not installed: apt-get install kannel kannel-extras"
)
TOKEN = secrets.token_urlsafe(32)
USERS = 5
MESSAGES = ["フローから送信 🎍", "二通目"]


@pytest.fixture(scope="module", autouse=True)
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    idle = Context.open(
        Settings(
            database_url=f"sqlite:///{tmp_path_factory.mktemp('receiver') / 'idle.db'}",
            receiver_token=TOKEN,  # type: ignore[arg-type]
        )
    )
    with Receiver(idle) as server:
        yield server
    idle.close()


@pytest.fixture(scope="module")
def kannel(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Kannel]:
    with Kannel(tmp_path_factory.mktemp("kannel"), mo_url=f"{receiver.url}/mo", token=TOKEN) as k:
        yield k


@pytest.fixture
def ctx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kannel: Kannel, receiver: Receiver
) -> Iterator[Context]:
    """SMSOPS_* in the environment, as a served deployment's process has them (the
    password is set by each test); 5 users and enough tickets."""
    for name, value in {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'smsops.db'}",
        "GATEWAY": "kannel",
        "KANNEL_URL": kannel.sendsms_url,
        "KANNEL_USER": kannel.user,
        "KANNEL_DLR_URL": f"{receiver.url}/dlr",
        "RECEIVER_TOKEN": TOKEN,
        "CHUNK_SIZE": "3",
        "IMPORT_ROOT": str(tmp_path),
    }.items():
        monkeypatch.setenv(f"SMSOPS_{name}", value)
    monkeypatch.delenv("SMSOPS_KANNEL_PASSWORD", raising=False)
    monkeypatch.delenv("SMSOPS_KANNEL_PASSWORD_BLOCK", raising=False)
    context = Context.open(Settings())
    add_users(context, [mobile(i) for i in range(1, USERS + 1)])
    accounts.add_tickets(context, USERS * len(MESSAGES))
    receiver.server.ctx = context  # delivery reports land in this test's store
    yield context
    context.close()


def dlr_statuses(ctx: Context, delivery_id: int) -> list[str | None]:
    with read(ctx.engine) as conn:
        return list(
            conn.execute(select(items.c.dlr_status).where(items.c.delivery_id == delivery_id))
            .scalars()
            .all()
        )


@pytest.mark.parametrize("source", ["environment", "prefect_secret_block"])
def test_create_bulk_flow_sends_every_message_through_kannel_with_the_real_password(
    ctx, kannel, monkeypatch, source, caplog
):
    from flows.campaigns import create_bulk

    if source == "environment":
        monkeypatch.setenv("SMSOPS_KANNEL_PASSWORD", kannel.password)
    else:
        Secret(value=kannel.password).save("smsops-kannel-password", overwrite=True)
        monkeypatch.setenv("SMSOPS_KANNEL_PASSWORD_BLOCK", "smsops-kannel-password")
    before = len(kannel.received())
    with caplog.at_level(logging.DEBUG):
        state = create_bulk(MESSAGES, confirm=True, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert (result["status"], result["sent"], result["errors"]) == ("sent", 10, 0)
    got = kannel.wait_received(before + USERS * len(MESSAGES))[before:]
    assert sorted((m.to, m.text) for m in got) == sorted(
        (e164(i), text) for i in range(1, USERS + 1) for text in MESSAGES
    )
    # the receiver's token survived too: Kannel's delivery reports were accepted
    wait_for(
        "delivery reports",
        lambda: dlr_statuses(ctx, result["delivery_id"]) == ["delivered"] * 10,
        timeout=30,
    )
    # and neither secret went into the flow's parameters, result, state, logs or artifacts
    shown = [repr(result), state.message or "", *(r.getMessage() for r in caplog.records)]
    shown.append(str(Artifact.get(f"delivery-{result['delivery_id']}-summary").data))
    for secret in (kannel.password, TOKEN):
        assert not any(secret in text for text in shown)


def test_create_bulk_flow_with_a_wrong_password_fails_with_kannels_reason(
    ctx, kannel, monkeypatch, caplog
):
    from flows.campaigns import DeliveryFailed, create_bulk

    wrong = "wrong-" + secrets.token_urlsafe(8)
    monkeypatch.setenv("SMSOPS_KANNEL_PASSWORD", wrong)
    before = len(kannel.received())
    with caplog.at_level(logging.DEBUG):
        state = create_bulk(MESSAGES, confirm=True, return_state=True)
    assert state.is_failed()
    assert "failed: sent 0, errors 10" in state.message
    assert "rejected: Authorization failed for sendsms: 10" in state.message
    with pytest.raises(DeliveryFailed, match="Authorization failed"):
        state.result()
    [delivery] = dl.list_deliveries(ctx)
    assert (delivery.status, delivery.sent, delivery.errors) == ("failed", 0, 10)
    summary = str(Artifact.get(f"delivery-{delivery.id}-summary").data)
    assert "| rejected: Authorization failed for sendsms | 10 |" in summary
    assert len(kannel.received()) == before  # nothing went out
    assert not any(wrong in r.getMessage() for r in caplog.records)
    assert wrong not in state.message
