"""One human rendering of a delivery (#14): ``DeliverySummary.human()`` is what
``deliveries show`` prints, what the report notebook's overview holds and what the Prefect
summary artifact shows — the same labels and values, in the reader's language (R14)."""

from __future__ import annotations

import json

import pytest
from support import mobile, users_csv

from smsops.reports.delivery import DeliveryReport
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.settings import Settings


def _sent_delivery(cli) -> tuple[Context, int]:
    """A delivery of two texts (one with a ``|``) to two numbers, sent at once through the
    CLI; the context on its store."""
    cli("users", "import", str(users_csv(cli.tmp, [mobile(1), mobile(2)])))
    cli("tickets", "add", "5")
    out = json.loads(
        cli("bulk", "create", "-m", "冬のセール", "-m", "A | B", "--yes", "--json").stdout
    )
    settings = Settings(
        database_url=cli.env["SMSOPS_DATABASE_URL"], outbox=cli.env["SMSOPS_OUTBOX"]
    )
    return Context.open(settings), out["delivery_id"]


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines()]


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_r14_deliveries_show_prints_the_one_rendering(cli, monkeypatch, lang):
    ctx, delivery = _sent_delivery(cli)
    monkeypatch.setenv("SMSOPS_LANG", lang)
    cli.env["SMSOPS_LANG"] = lang
    try:
        human = dl.delivery_summary(ctx, delivery).human()  # in this process: SMSOPS_LANG
        shown = _lines(cli("deliveries", "show", str(delivery)).stdout)
    finally:
        ctx.close()
    assert human[("メッセージ{number}" if lang == "ja" else "message {number}").format(number=2)]
    assert ("状態" if lang == "ja" else "status") in human
    for label, value in human.items():  # each label with its value, on a line of its own
        assert f"{label} {' '.join(value.split())}" in shown, (label, value, shown[:20])


def test_r14_the_report_overview_and_the_show_say_the_same(cli):
    ctx, delivery = _sent_delivery(cli)
    try:
        human = dl.delivery_summary(ctx, delivery).human()
        overview = DeliveryReport.load(ctx, delivery).overview()
    finally:
        ctx.close()
    assert list(overview.index) == list(human)
    assert [str(v) for v in overview.iloc[:, 0]] == list(human.values())
    assert human["status"] == "sent" and human["sent"] == "4" and human["errors"] == "0"
    assert human["tickets used"] == "4" and "resend of" not in human
    assert human["message 2"] == "A | B" and human["scheduled"] == "now"


def test_r14_deliveries_list_shows_the_rendering_of_each_delivery_in_its_columns(cli):
    ctx, first = _sent_delivery(cli)
    cli("tickets", "add", "2")
    second = json.loads(cli("bulk", "create", "-m", "次回", "--yes", "--json").stdout)
    try:
        rows = [dl.delivery_summary(ctx, d).human() for d in (second["delivery_id"], first)]
        columns = dl.DeliverySummary.columns()
    finally:
        ctx.close()
    shown = _lines(cli("deliveries", "list").stdout)
    header = next(line for line in shown if line.startswith("┃"))
    assert [c.strip() for c in header.split("┃")[1:-1]] == columns
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in shown if line.startswith("│")]
    assert cells == [[row.get(column, "") for column in columns] for row in rows]  # newest first
