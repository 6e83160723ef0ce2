"""The Prefect flows, with Prefect's test harness (a temporary local API)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from clocks import Clock, jst
from prefect.artifacts import Artifact
from prefect.testing.utilities import prefect_test_harness
from support import e164, mobile

from smsops.errors import InputError, PathError, ScheduleError
from smsops.gateways.outbox import OutboxGateway
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import people
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
    assert people.users_count(ctx) == 0  # all or nothing


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
    from flows import campaigns
    from flows.campaigns import dispatch_due, resend_failures
    from smsops.services.dispatch import dispatch, due_ids

    # the flows' own Context (they run in this process), on a clock the test moves (#14)
    ctx = campaigns._context()
    ctx.clock = clock = Clock(jst(2099, 12, 1, 9))
    people.upsert_users(
        ctx, pd.DataFrame({"user_id": ["a", "b", "c"], "phone": [mobile(1), mobile(2), mobile(3)]})
    )
    accounts.add_tickets(ctx, 6)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["a", "b"], at="2099-12-01 10:00"))
    dispatch(ctx, dl.send_individual(ctx, mobile(9), ["x"]).delivery_id)  # balance drops
    assert due_ids(ctx) == []  # R12: not before its time
    clock.jump_to(jst(2099, 12, 1, 10))
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
    people.upsert_users(ctx, pd.DataFrame({"user_id": ["a", "b"], "phone": [mobile(1), mobile(2)]}))
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


class OnceThen(OutboxGateway):
    """An outbox whose first send does ``first(batch)`` before it hands anything over.
    ``built`` counts the gateways the flow made: one per run of the send_chunk task."""

    built = 0
    first = None

    def send(self, batch, hand_off=None):
        first, OnceThen.first = OnceThen.first, None
        if first is not None:
            with first(batch):
                return super().send(batch, hand_off)
        return super().send(batch, hand_off)


def two_users_four_pairs(ctx: Context) -> int:
    people.upsert_users(ctx, pd.DataFrame({"user_id": ["a", "b"], "phone": [mobile(1), mobile(2)]}))
    accounts.add_tickets(ctx, 4)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["a", "b"]))

    def factory(settings: Settings) -> OnceThen:
        OnceThen.built += 1
        return OnceThen(settings.outbox)

    OnceThen.built = 0
    ctx.gateway_factory = factory
    return created.delivery_id


def test_a_terminal_error_is_not_retried_a_lost_claim_fails_the_run_at_once(env):
    """#14: send_chunk retries only what a retry can cure. A claim lost to a successor
    (its lease passed) is a StateError: one run of the task, not four."""
    from contextlib import contextmanager

    from flows import campaigns
    from smsops.errors import StateError
    from smsops.store import write
    from smsops.store.schema import dispatchers

    ctx = campaigns._context()
    delivery_id = two_users_four_pairs(ctx)

    @contextmanager
    def taken_over(batch):  # what a successor does once the lease has passed
        with write(ctx.engine) as conn:
            conn.execute(dispatchers.delete().where(dispatchers.c.delivery_id == delivery_id))
        yield

    OnceThen.first = taken_over
    with pytest.raises(StateError, match="lost its claim"):
        campaigns.dispatch_delivery(delivery_id)
    assert OnceThen.built == 1  # retrying every error, as before #14, made 4
    assert Path(env.outbox).read_text() == ""  # nothing was handed over


def test_a_transient_error_is_retried_a_locked_database_then_sends_each_pair_once(env, monkeypatch):
    """#14: the SQLite store is locked by another process past SMSOPS_BUSY_TIMEOUT in the
    middle of a chunk (StoreUnavailable, transient): the task runs again, settles the
    first attempt and sends every pair exactly once."""
    import sqlite3
    from contextlib import contextmanager

    from flows import campaigns

    monkeypatch.setenv("SMSOPS_BUSY_TIMEOUT", "0.2")
    ctx = campaigns._context()
    delivery_id = two_users_four_pairs(ctx)

    @contextmanager
    def locked(batch):  # another process holds the write lock, then lets go
        other = sqlite3.connect(ctx.settings.database_url.removeprefix("sqlite:///"))
        other.isolation_level = None
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.rollback()
            other.close()

    OnceThen.first = locked
    result = campaigns.dispatch_delivery(delivery_id)
    assert (result["sent"], result["errors"]) == (4, 0)
    assert OnceThen.built == 3  # the failed run, its retry, the run that found none left
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
    assert people.users_count(Context.open(env)) == 0


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


# --- issue 17: secrets reach the flow; Prefect tells the truth ------------------------


def test_flow_context_keeps_secret_values_and_follows_a_changed_password(env, monkeypatch):
    from flows import campaigns

    monkeypatch.setenv("SMSOPS_KANNEL_PASSWORD", "first-s3cret")
    monkeypatch.setenv("SMSOPS_RECEIVER_TOKEN", "t" * 32)
    first = campaigns._context()
    assert first.settings.kannel_password.get_secret_value() == "first-s3cret"
    assert first.settings.receiver_token.get_secret_value() == "t" * 32
    assert campaigns._context() is first  # cached per distinct settings
    monkeypatch.setenv("SMSOPS_KANNEL_PASSWORD", "second-s3cret")
    second = campaigns._context()
    assert second is not first
    assert second.settings.kannel_password.get_secret_value() == "second-s3cret"
    assert not any("s3cret" in key for key in campaigns._contexts)  # keys are digests


def queued_bulk(ctx: Context, phones: list[str], messages: list[str]) -> int:
    """A confirmed bulk delivery to ``phones``, queued, not yet sent."""
    people.upsert_users(
        ctx, pd.DataFrame({"user_id": [f"u{i}" for i in range(len(phones))], "phone": phones})
    )
    accounts.add_tickets(ctx, len(phones) * len(messages))
    return dl.create_bulk(ctx, dl.preview_bulk(ctx, messages)).delivery_id


def test_partially_sent_delivery_says_so_in_its_run_state_and_counts_errors_by_reason(env):
    from flows.campaigns import dispatch_delivery

    ctx = Context.open(env)
    delivery_id = queued_bulk(ctx, [mobile(1), mobile(2), mobile(3)], ["a", "b"])
    from smsops.services.dispatch import dispatch

    dispatch(ctx, dl.send_individual(ctx, mobile(9), ["x"]).delivery_id)  # R10: 1 short
    state = dispatch_delivery(delivery_id, return_state=True)
    assert state.is_completed()
    assert state.message == (
        f"delivery {delivery_id} partially_sent: sent 5, errors 1 (insufficient_tickets: 1)"
    )
    assert state.result()["status"] == "partially_sent"
    summary = markdown(f"delivery-{delivery_id}-summary")
    assert "### Errors by reason" in summary and "| insufficient_tickets | 1 |" in summary


def test_failed_delivery_fails_its_flow_run_and_dispatch_due_still_sends_the_others(env):
    from flows.campaigns import dispatch_delivery, dispatch_due
    from smsops.errors import DeliveryFailed

    ctx = Context.open(env)
    doomed = queued_bulk(ctx, [mobile(1), mobile(2)], ["a"])
    accounts.add_tickets(ctx, 4)
    doomed_too = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["b"])).delivery_id
    doomed_three = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["c"])).delivery_id
    accounts.set_account(ctx, plan="light")  # R1 again at send time: nothing goes out
    state = dispatch_delivery(doomed, return_state=True)
    assert state.is_failed()
    assert f"delivery {doomed} failed: sent 0, errors 2 (plan_below_standard: 2)" in state.message
    with pytest.raises(DeliveryFailed, match="plan_below_standard: 2"):
        state.result()
    assert "| plan_below_standard | 2 |" in markdown(f"delivery-{doomed}-summary")

    due = dispatch_due(return_state=True)
    assert due.is_failed()  # and the first failure did not stop it sending the next one
    for delivery_id in (doomed_too, doomed_three):
        assert f"delivery {delivery_id} failed: sent 0, errors 2" in due.message
    statuses = {d.id: d.status for d in dl.list_deliveries(ctx)}
    assert statuses[doomed_too] == statuses[doomed_three] == "failed"


def test_overdue_dispatch_due_runs_collapse_into_one(env):
    """Nothing served dispatch-due for a while: Prefect kept one late run per missed
    interval. The first to run does the work of all of them and cancels the rest; runs
    whose time has not come stay scheduled."""
    from datetime import UTC, datetime, timedelta

    from prefect import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.campaigns import dispatch_due
    from flows.serve import deployments

    [deployment] = [d for d in deployments(10) if d.name == "dispatch-due"]
    deployment.schedules = []  # only the runs made below
    deployment_id = deployment.apply()
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        runs = [
            client.create_flow_run_from_deployment(
                deployment_id, state=Scheduled(scheduled_time=now + timedelta(seconds=s))
            )
            for s in (-50, -40, -30, -20, -10, 600)
        ]
        run_flow(dispatch_due, flow_run=client.read_flow_run(runs[0].id))
        states = [client.read_flow_run(r.id).state for r in runs]
    assert states[0].is_completed()
    assert [s.type.value for s in states[1:]] == ["CANCELLED"] * 4 + ["SCHEDULED"]
    assert all(f"collapsed into run {runs[0].name}" in s.message for s in states[1:5])


def test_every_flow_is_served_with_its_own_concurrency():
    """preview-bulk is served too; dispatch-due runs one at a time and a second one is
    cancelled, not queued; each sending deployment has slots of its own."""
    import yaml
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from flows.serve import deployments

    served = {d.name: d.concurrency_options for d in deployments(10)}
    limits = {d.name: d.concurrency_limit for d in deployments(10)}
    assert set(served) == {
        "dispatch-due",
        "import-users",
        "import-drops",
        "preview-bulk",
        "create-bulk",
        "dispatch-delivery",
        "resend-failures",
    }
    assert limits["dispatch-due"] == 1
    assert served["dispatch-due"].collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    for name in ("create-bulk", "dispatch-delivery", "resend-failures"):
        assert limits[name] >= 1
        assert served[name].collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    project = Path(__file__).parents[2] / "prefect.yaml"
    declared = {d["name"]: d for d in yaml.safe_load(project.read_text())["deployments"]}
    assert set(declared) == set(served)
    for name, d in declared.items():
        assert d["concurrency_limit"]["limit"] == limits[name]
        expected = served[name].collision_strategy.value
        assert d["concurrency_limit"]["collision_strategy"] == expected


def test_r16_dispatch_due_publishes_the_replies_to_review_masked(env):
    """Replies that may be a refusal wait for a person: dispatch-due lists them in the
    ``replies-to-review`` artifact, senders and quoted numbers masked; the others are not
    in it, and no artifact is published while there is nothing to review."""
    from flows.campaigns import dispatch_due
    from smsops.services import inbound

    ctx = Context.open(env)
    inbound.handle_reply(ctx, e164(1), "ありがとう")  # ignored
    before = Artifact.get("replies-to-review")
    dispatch_due()
    assert Artifact.get("replies-to-review") == before  # nothing to review: none published
    inbound.handle_reply(ctx, e164(2), "STOP")  # opted out
    inbound.handle_reply(ctx, e164(3), f"停止しないで。{mobile(77)}にも送って")  # review
    inbound.handle_reply(ctx, e164(4), "配信停止ですか？")  # review
    dispatch_due()
    artifact = Artifact.get("replies-to-review")
    assert artifact is not None and "2 replies may be a refusal" in str(artifact.description)
    rows = json.loads(artifact.data)
    assert [r["sender"] for r in rows] == ["090-****-0004", "090-****-0003"]  # newest first
    assert {r["why"] for r in rows} == {"negated", "question"}
    assert e164(77) not in artifact.data and mobile(77) not in artifact.data
    for i in (1, 2, 3, 4):
        assert e164(i) not in artifact.data and mobile(i) not in artifact.data


def _shut_window(ctx: Context) -> str:
    """A sending window (account time) that opens in two hours: shut now."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from smsops import clock

    now = clock.now().astimezone(ZoneInfo("Asia/Tokyo"))
    opens, closes = now + timedelta(hours=2), now + timedelta(hours=3)
    window = f"{opens:%H:%M}-{closes:%H:%M}"
    accounts.set_account(ctx, timezone="Asia/Tokyo", window=window)
    return window


def test_issue11_create_bulk_flow_sends_outside_the_window_only_on_purpose(env, tmp_path):
    """A flow run refuses a send-now while the window is shut (R12 style), like the CLI,
    and saves nothing; ``outside_window=true`` sends it."""
    from flows.campaigns import create_bulk

    ctx = Context.open(env)
    people.import_users(ctx, [users_csv(tmp_path, [mobile(1), mobile(2)])])
    accounts.add_tickets(ctx, 4)
    window = _shut_window(ctx)
    with pytest.raises(ScheduleError, match="outside the sending window " + window):
        create_bulk(["セール", "二通目"], confirm=True)
    assert dl.list_deliveries(ctx) == []
    result = create_bulk(["セール", "二通目"], confirm=True, outside_window=True)
    assert (result["status"], result["sent"], result["errors"]) == ("sent", 4, 0)
