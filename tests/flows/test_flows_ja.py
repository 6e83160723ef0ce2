"""Issue #15: the flows' artifacts in the reader's language (SMSOPS_LANG or the locale of
the process running the flow, else the account's), with Prefect's test harness; state
messages, logs, statuses, reasons and table columns stay English."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from prefect.artifacts import Artifact
from prefect.testing.utilities import prefect_test_harness
from support import e164, mobile

from smsops import i18n
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import inbound, people
from smsops.services.context import Context
from smsops.settings import Settings

# what stays English on purpose: statuses, kinds, reasons, code and names
_KEPT = re.compile(
    r"partially_sent|insufficient_tickets|bulk|R\d+|`[^`]*`|\S+\.csv|\S*/\S*|upsert|SMSOPS_\w+"
)


def english_left(text: str) -> list[str]:
    """Runs of English prose (two words or more) left in ``text``."""
    return re.findall(r"\b[A-Za-z]{2,}(?:[ ,]+[A-Za-z]{2,})+\b", _KEPT.sub(" ", text))


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SMSOPS_LANG", "ja")
    monkeypatch.setenv("SMSOPS_DATABASE_URL", f"sqlite:///{tmp_path / 'smsops.db'}")
    monkeypatch.setenv("SMSOPS_OUTBOX", str(tmp_path / "outbox.jsonl"))
    monkeypatch.setenv("SMSOPS_IMPORT_ROOT", str(tmp_path))
    monkeypatch.setenv("SMSOPS_DROPS", str(tmp_path / "drops"))
    i18n.set_account_default(None)
    yield Settings()
    i18n.set_account_default(None)


def artifact(key: str) -> Artifact:
    found = Artifact.get(key)
    assert found is not None, key
    return found


def queued_bulk(ctx: Context, phones: list[str], messages: list[str]) -> int:
    accounts.set_account(ctx, plan="standard")
    people.upsert_users(
        ctx, pd.DataFrame({"user_id": [f"u{i}" for i in range(len(phones))], "phone": phones})
    )
    accounts.add_tickets(ctx, len(phones) * len(messages))
    return dl.create_bulk(ctx, dl.preview_bulk(ctx, messages)).delivery_id


def test_issue15_delivery_summary_in_japanese_state_message_english(env):
    from flows.campaigns import dispatch_delivery
    from smsops.services.dispatch import dispatch

    ctx = Context.open(env)
    delivery_id = queued_bulk(ctx, [mobile(1), mobile(2), mobile(3)], ["a", "b"])
    dispatch(ctx, dl.send_individual(ctx, mobile(9), ["x"]).delivery_id)  # R10: 1 short
    state = dispatch_delivery(delivery_id, return_state=True)
    assert state.message == (
        f"delivery {delivery_id} partially_sent: sent 5, errors 1 (insufficient_tickets: 1)"
    )
    summary = str(artifact(f"delivery-{delivery_id}-summary").data)
    assert f"## 配信 {delivery_id}：partially_sent" in summary
    for row in ("| 種類 | bulk |", "| 宛先数 | 3 |", "| 送信数 | 5 |", "| エラー数 | 1 |"):
        assert row in summary
    assert "| 予約日時 | 今すぐ |" in summary
    assert re.search(r"\| 完了日時 \| \d{4}年\d{1,2}月\d{1,2}日 \d{1,2}:\d{2} \|", summary)
    assert "### 理由別のエラー" in summary and "| 理由 | 件数 |" in summary
    assert "| insufficient_tickets | 1 |" in summary
    assert "配信後の残高：0枚" in summary
    assert english_left(summary) == [], summary


def test_issue15_the_accounts_language_when_the_environment_says_none(env, monkeypatch):
    from flows.campaigns import dispatch_delivery

    monkeypatch.delenv("SMSOPS_LANG")
    ctx = Context.open(env)
    delivery_id = queued_bulk(ctx, [mobile(1)], ["a"])
    dispatch_delivery(delivery_id)
    assert f"## Delivery {delivery_id}: sent" in str(
        artifact(f"delivery-{delivery_id}-summary").data
    )
    accounts.set_account(ctx, language="ja")
    delivery_id = queued_bulk(ctx, [mobile(2)], ["b"])
    dispatch_delivery(delivery_id)
    summary = str(artifact(f"delivery-{delivery_id}-summary").data)
    assert f"## 配信 {delivery_id}：sent" in summary and "配信後の残高：0枚" in summary


def test_issue15_import_preview_and_rejected_artifacts_in_japanese(env, tmp_path):
    from flows.campaigns import create_bulk, import_users

    users = tmp_path / "users.csv"
    users.write_text(f"user_id,phone\nu1,{mobile(1)}\nu2,{mobile(2)}\n", encoding="utf-8")
    import_users([str(users)])
    summary = str(artifact("import-summary").data)
    assert "## ユーザーの取り込み" in summary and "| ユーザー総数 | 2 |" in summary
    assert "| 取り込んだ行数 | 2 |" in summary and english_left(summary) == []

    accounts.set_account(Context.open(env), plan="standard")
    create_bulk(["セール"])
    sample = artifact("bulk-recipients-sample")
    assert sample.description == "最初の宛先（伏せ字）"
    assert set(json.loads(str(sample.data))[0]) == {"seq", "phone"}  # columns stay

    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,phone\n,090\n", encoding="utf-8")
    with pytest.raises(Exception, match="row 1"):  # the run's error stays English
        import_users([str(bad)])
    rejected = artifact("import-rejected-rows")
    assert rejected.description == f"取り込み拒否：{bad}（何も取り込んでいません）"


def test_issue15_drop_folder_pass_in_japanese(env, tmp_path):
    from flows.campaigns import import_drops

    inbox = tmp_path / "drops"
    inbox.mkdir()
    hour_ago = time.time() - 3600  # written and settled long ago
    for name, text in (("a.csv", f"user_id,phone\nu1,{mobile(1)}\n"), ("b.csv", ",\n")):
        (inbox / name).write_text(text, encoding="utf-8")
        os.utime(inbox / name, (hour_ago, hour_ago))
    result = import_drops()
    assert result["counts"]["imported"] == result["counts"]["rejected"] == 1
    passed = artifact("drop-folder-pass")
    assert passed.description == (
        "ドロップフォルダー（モード upsert）：取り込み 1件、拒否 1件、スキップ（重複） 0件、"
        "書き込み中 0件：rejected/*.errors.csv を見てください"
    )
    rejected = artifact("drop-rejected-rows")
    assert rejected.description is not None
    assert rejected.description.startswith("取り込み拒否：b.csv（何も取り込んでいません）。詳細は ")
    assert set(json.loads(str(passed.data))[0]) >= {"name", "outcome"}  # columns stay


def test_issue15_replies_to_review_in_japanese(env):
    from flows.campaigns import dispatch_due

    ctx = Context.open(env)
    inbound.handle_reply(ctx, e164(3), "停止しないで")  # review
    inbound.handle_reply(ctx, e164(4), "配信停止ですか？")  # review
    dispatch_due()
    review = artifact("replies-to-review")
    assert review.description == (
        "返信 2件が配信停止の申し出かもしれません（R16）。読んで、申し出なら "
        "`smsops optout add NUMBER` で配信停止リストに加えてください"
        "（`smsops replies list --action review`）。"
    )
    rows = json.loads(str(review.data))
    assert set(rows[0]) == {"reply", "received", "sender", "text", "why"}
