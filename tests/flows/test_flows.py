"""The Prefect flows, with Prefect's test harness (a temporary local API)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from prefect.artifacts import Artifact
from prefect.testing.utilities import prefect_test_harness
from support import e164, mobile

from smsops.errors import InputError, PathError
from smsops.gateways.outbox import OutboxGateway
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.settings import Settings


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def env(tmp_path: Path, monkeypatch) -> Settings:
    monkeypatch.setenv("SMSOPS_DATABASE_URL", f"sqlite:///{tmp_path / 'smsops.db'}")
    monkeypatch.setenv("SMSOPS_OUTBOX", str(tmp_path / "outbox.jsonl"))
    monkeypatch.setenv("SMSOPS_CHUNK_SIZE", "4")
    monkeypatch.setenv("SMSOPS_IMPORT_ROOT", str(tmp_path))
    return Settings()


def users_csv(tmp_path: Path, phones: list[str], name: str = "users.csv") -> str:
    path = tmp_path / name
    path.write_text(
        "user_id,phone\n" + "".join(f"{name}-{i},{p}\n" for i, p in enumerate(phones, 1)),
        encoding="utf-8",
    )
    return str(path)


def markdown(key: str) -> str:
    artifact = Artifact.get(key)
    assert artifact is not None, key
    return str(artifact.data)


def test_import_users_flow_batches_files_and_reports(env, tmp_path):
    from flows.campaigns import import_users

    a = users_csv(tmp_path, [mobile(1), mobile(2)], "a")
    b = users_csv(tmp_path, [mobile(3)], "b")
    result = import_users([a, b])
    assert (result["rows"], result["users_total"]) == (3, 3)
    assert "users in total | 3" in markdown("import-summary")


def test_import_users_flow_rejects_all_and_lists_the_rows(env, tmp_path):
    from flows.campaigns import import_users

    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,phone\n,090\nx,9.01234E+09\n", encoding="utf-8")
    with pytest.raises(InputError):
        import_users([users_csv(tmp_path, [mobile(1)], "ok"), str(bad)])
    rows = json.loads(Artifact.get("import-rejected-rows").data)
    assert {r["row"] for r in rows} == {1, 2}
    ctx = Context.open(env)
    assert dl.people.users_count(ctx) == 0  # all or nothing


def test_r13_create_bulk_flow_saves_only_when_confirmed(env, tmp_path, caplog):
    from flows.campaigns import create_bulk, import_users

    import_users([users_csv(tmp_path, [mobile(1), mobile(2), mobile(3)])])
    ctx = Context.open(env)
    accounts.add_tickets(ctx, 10)
    preview = create_bulk(["セール"])
    assert preview["delivery_id"] is None and preview["recipients"] == 3
    assert dl.list_deliveries(ctx) == []
    confirmation = markdown("bulk-confirmation")
    assert "tickets needed | 3" in confirmation
    sample = json.loads(Artifact.get("bulk-recipients-sample").data)
    assert [row["phone"] for row in sample] == ["090-****-0001", "090-****-0002", "090-****-0003"]
    with caplog.at_level(logging.INFO):
        result = create_bulk(["セール"], confirm=True)
    assert (result["status"], result["sent"]) == ("sent", 3)
    assert "sent: sent 3" in markdown(f"delivery-{result['delivery_id']}-summary") or (
        "| sent | 3 |" in markdown(f"delivery-{result['delivery_id']}-summary")
    )
    # no full number in anything Prefect logged
    assert not any(e164(i) in r.getMessage() for r in caplog.records for i in (1, 2, 3))


def test_dispatch_due_flow_sends_scheduled_and_resend_flow_repairs(env, tmp_path):
    import time
    from datetime import UTC, datetime, timedelta

    from flows.campaigns import dispatch_due, resend_failures

    ctx = Context.open(env)
    people = dl.people
    people.upsert_users(
        ctx, pd.DataFrame({"user_id": ["a", "b", "c"], "phone": [mobile(1), mobile(2), mobile(3)]})
    )
    accounts.add_tickets(ctx, 6)
    at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["a", "b"], at=at))
    from smsops.services.dispatch import dispatch

    dispatch(ctx, dl.send_individual(ctx, mobile(9), ["x"]).delivery_id)  # balance drops
    time.sleep(1.2)
    results = dispatch_due()
    by_id = {r["delivery_id"]: r for r in results}
    assert by_id[created.delivery_id]["sent"] == 5  # 1 ticket went to the individual send
    accounts.add_tickets(ctx, 1)
    repaired = resend_failures(created.delivery_id)
    assert (repaired["resend_of"], repaired["sent"]) == (created.delivery_id, 1)
    assert dispatch_due() == []


class AcceptThenTimeout(OutboxGateway):
    """A provider that accepts the first batch but whose answer never arrives (the
    connection times out): the classic ambiguous failure a retry must not double."""

    failed = False

    def send(self, batch, hand_off=None):
        result = super().send(batch, hand_off)
        if not AcceptThenTimeout.failed:
            AcceptThenTimeout.failed = True
            raise TimeoutError("gateway answer lost")
        return result


def test_send_chunk_retry_never_sends_twice(env, tmp_path):
    """The gateway accepted a chunk but its answer was lost; the task is retried with
    backoff, and the retry settles the first attempt from the idempotency keys."""
    from flows import campaigns

    ctx = campaigns._context()
    dl.people.upsert_users(
        ctx, pd.DataFrame({"user_id": ["a", "b"], "phone": [mobile(1), mobile(2)]})
    )
    accounts.add_tickets(ctx, 4)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["a", "b"]))
    ctx.gateway_factory = lambda settings: AcceptThenTimeout(settings.outbox)
    result = campaigns.dispatch_delivery(created.delivery_id)
    assert AcceptThenTimeout.failed
    assert (result["sent"], result["errors"]) == (4, 0)
    lines = [json.loads(x) for x in Path(env.outbox).read_text().splitlines()]
    assert sorted((x["phone"], x["message_no"]) for x in lines) == [
        (e164(1), 1),
        (e164(1), 2),
        (e164(2), 1),
        (e164(2), 2),
    ]


def test_kannel_password_from_a_prefect_secret_block_never_shows(env):
    from prefect.blocks.system import Secret

    from smsops.gateways.kannel import KannelGateway

    Secret(value="s3cret-kannel").save("kannel-password", overwrite=True)
    settings = Settings(
        gateway="kannel", kannel_user="smsops", kannel_password_block="kannel-password"
    )
    gateway = KannelGateway(settings)
    try:
        assert gateway._secret.get_secret_value() == "s3cret-kannel"
        assert "s3cret" not in repr(gateway) and "s3cret" not in repr(settings)
    finally:
        gateway.close()
    with pytest.raises(Exception, match="cannot load the Prefect Secret block 'nope'"):
        KannelGateway(
            Settings(gateway="kannel", kannel_user="smsops", kannel_password_block="nope")
        )


# --- threat model: anyone who can reach the Prefect API (README, "Who can do what") -----

PWNED = "user_id.__class__.__init__.__globals__['sys'].modules['os'].system('touch {}') == 0"


def test_threat_prefect_api_query_runs_no_code(env, tmp_path):
    from flows.campaigns import create_bulk, import_users, preview_bulk

    import_users([users_csv(tmp_path, [mobile(1), mobile(2)])])
    pwned = tmp_path / "pwned"
    for run in (preview_bulk, lambda m, query: create_bulk(m, query=query, confirm=True)):
        with pytest.raises(InputError, match="names starting with '__' are not allowed"):
            run(["x"], query=PWNED.format(pwned))
        assert not pwned.exists()
    assert dl.list_deliveries(Context.open(env)) == []
    # the same language still selects
    assert preview_bulk(["x"], query="user_id == 'users.csv-2'")["recipients"] == 1


@pytest.mark.parametrize(
    "outside", ["/etc/passwd", "../outside.csv", "link.csv", "sub/../../x.csv"]
)
def test_threat_prefect_api_reads_no_file_outside_the_import_root(env, tmp_path, outside):
    from flows.campaigns import import_users, preview_bulk

    secret = tmp_path.parent / "outside.csv"
    secret.write_text("user_id,phone\nleak-header,09011112222\n", encoding="utf-8")
    (tmp_path / "link.csv").symlink_to(secret)  # a symlink that leads out of the root
    opened: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str) and "outside" in args[0]:
            opened.append(args[0])

    import sys

    sys.addaudithook(audit)
    with pytest.raises(PathError, match=r"outside the import root|'\.\.' is not allowed"):
        import_users([outside])
    with pytest.raises(PathError):
        preview_bulk(["x"], users_files=[outside])
    assert opened == []  # refused before the file was opened
    rows = json.loads(Artifact.get("import-rejected-rows").data)
    assert len(rows) == 1 and "leak-header" not in json.dumps(rows)
    assert rows[0]["problem"].startswith(repr(outside))
    assert dl.people.users_count(Context.open(env)) == 0


def test_threat_prefect_api_artifact_shows_no_file_content_but_the_masked_cell(env, tmp_path):
    from flows.campaigns import import_users

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("secret-token-abc,other\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError):
        import_users(["wrong.csv"])  # relative to the import root
    assert "secret-token-abc" not in Artifact.get("import-rejected-rows").data
    bad = tmp_path / "bad.csv"
    bad.write_text(f"user_id,phone,note\nu1,{mobile(1)},ok\nu1,{mobile(2)},secret\n", "utf-8")
    with pytest.raises(InputError):
        import_users([str(bad)])
    shown = Artifact.get("import-rejected-rows").data
    assert "'u1' repeats row 1" in shown and "secret" not in shown and mobile(2) not in shown
