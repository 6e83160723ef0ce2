"""``smsops replies list``: every reply received (R16), newest first, numbers masked."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from smsops.cli import app
from smsops.services.context import Context
from smsops.services.inbound import handle_reply
from smsops.settings import Settings


def test_r16_replies_list_shows_every_reply_newest_first_masked(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'smsops.db'}"
    ctx = Context.open(Settings(database_url=url))
    handle_reply(ctx, "+819012345678", "配信を停止してください")
    handle_reply(ctx, "+819087654321", "停止ってどうやるの？")
    handle_reply(ctx, "+817011112222", "ありがとう [bold]")
    ctx.close()
    runner = CliRunner()
    env = {"SMSOPS_DATABASE_URL": url}
    result = runner.invoke(app, ["replies", "list", "--json"], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [(r["sender"], r["action"], r["reason"]) for r in doc["replies"]] == [
        ("070-****-2222", "ignored", "not_a_stop_request"),
        ("090-****-4321", "review", "question"),
        ("090-****-5678", "opted_out", "stop_request"),
    ]
    assert set(doc["replies"][0]) == {"id", "received_at", "sender", "text", "action", "reason"}
    review = runner.invoke(app, ["replies", "list", "--action", "review", "--json"], env=env)
    assert [r["text"] for r in json.loads(review.stdout)["replies"]] == ["停止ってどうやるの？"]
    full = runner.invoke(app, ["replies", "list", "--show-numbers", "--json"], env=env)
    assert json.loads(full.stdout)["replies"][0]["sender"] == "+817011112222"
    human = runner.invoke(app, ["replies", "list"], env=env)
    assert human.exit_code == 0 and "1 to review" in human.stdout
    assert "+8190" not in human.stdout and "[bold]" in human.stdout
