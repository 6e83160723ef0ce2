"""The analyst notebooks (issue 5), executed by papermill on the project's kernel against a
temporary store prepared through the services: what they show (R13, R14) and what they
write to the store (only with ``confirm`` / ``resend``; R15's exact failed pairs)."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from support import RefusingOutbox, add_users, e164, mobile, outbox

from smsops import clock, reports
from smsops.errors import NotFoundError
from smsops.gateways.outbox import OutboxGateway
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import people
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
UNMASKED = re.compile(r"\+81\d{9,10}|0[6-9]0-?\d{4}-?\d{4}")
PARAMETERS = {
    "campaign": ["database_url", "users_csv", "query", "messages", "at", "confirm", "language"],
    "delivery_report": ["database_url", "delivery_id", "resend", "language"],
}


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture
def settings(request, sqlite_settings, tmp_path):
    """Each notebook run starts a kernel (seconds), so these run on SQLite; the services
    are tested on both stores, and the resend run (the one that writes most) on both too."""
    if getattr(request, "param", "sqlite") == "postgres":
        url = request.getfixturevalue("postgres_url")
        return Settings(database_url=url, outbox=tmp_path / "outbox.jsonl")
    return sqlite_settings


@pytest.fixture
def env(settings, monkeypatch):
    """The kernel inherits the environment: point its default settings at the test store."""
    monkeypatch.setenv("SMSOPS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SMSOPS_OUTBOX", str(settings.outbox))
    return settings


def run(name: str, tmp_path: Path, **parameters):
    return reports.execute(
        NOTEBOOKS / f"{name}.ipynb", tmp_path / f"{name}.out.ipynb", parameters, cwd=tmp_path
    )


def outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def shown(nb) -> str:
    """Everything the executed notebook shows, as text (images excluded)."""
    parts = []
    for o in outputs(nb):
        parts.append(o.get("text", ""))
        for mime in ("text/plain", "text/markdown", "text/html"):
            parts.append(o.get("data", {}).get(mime, ""))
    return "\n".join(parts)


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def masked(i: int) -> str:
    return f"090-****-{e164(i)[-4:]}"




def users(ctx: Context) -> None:
    """10 mobiles (u1–u10) and 4 users who are not recipients: a duplicate of number 1,
    a landline, a blank and a malformed number."""
    add_users(ctx, [mobile(i) for i in range(1, 11)] + [mobile(1), "03-1234-5678", None, "abc"])


def failed_delivery(settings) -> int:
    """The latest delivery: 10 recipients × 2 messages, sent when another bulk delivery had
    left 16 of the 20 tickets it needs; number 3 opted out after it was created; the gateway
    refused message 1 to number 5. Failures: 5/1 rejected, 10/1 and 10/2 insufficient
    tickets (R10), 3/1 and 3/2 opted out (never resent, R16)."""
    ctx = Context.open(settings, gateway_factory=lambda s: RefusingOutbox(s.outbox, lambda b: (b["phone"] == e164(5)) & (b["message_no"] == 1)))
    users(ctx)
    accounts.add_tickets(ctx, 24)
    msgs = ["冬のセール開始！", "詳細はWebで"]
    other = dl.create_bulk(
        ctx, dl.preview_bulk(ctx, msgs, query="user_id in ['u1', 'u2', 'u4', 'u6']")
    )
    main = dl.create_bulk(ctx, dl.preview_bulk(ctx, msgs))
    dispatch(ctx, other.delivery_id)
    people.optout_add(ctx, mobile(3))
    result = dispatch(ctx, main.delivery_id)
    assert (result.status, result.sent, result.errors) == ("partially_sent", 15, 5)
    ctx.close()
    return main.delivery_id


def pairs(frame: pd.DataFrame) -> list[tuple[int, str, int]]:
    return sorted(zip(frame["seq"], frame["phone"], frame["message_no"], strict=True))


# --- the notebooks as committed ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_notebooks_are_committed_as_reports_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    first, second = nb.cells[0], nb.cells[1]
    assert "parameters" in first.metadata.get("tags", [])
    assigned = re.findall(r"^(\w+) = ", first.source, flags=re.MULTILINE)
    assert assigned == PARAMETERS[name]
    assert second.cell_type == "markdown"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            if cell is not first:  # anything longer belongs in smsops.reports
                assert len(cell.source.splitlines()) <= 12
    assert nb.metadata.kernelspec.name == reports.KERNEL
    check = subprocess.run(
        [Path(sys.executable).parent / "nbstripout", "--verify", NOTEBOOKS / f"{name}.ipynb"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_kernel_is_this_interpreter(tmp_path):
    """papermill's ``python3`` kernel runs the project's own Python (the venv's)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys\nsys.executable")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": ""}
    nbformat.write(nb, tmp_path / "probe.ipynb")
    done = reports.execute(tmp_path / "probe.ipynb", tmp_path / "probe.out.ipynb", cwd=tmp_path)
    assert outputs(done)[0]["data"]["text/plain"] == repr(sys.executable)


# --- campaign (R13) ---------------------------------------------------------------------


def test_threat_notebook_query_parameter_runs_no_code(env, ctx, tmp_path):
    """A notebook's parameters (papermill -p) go through the same selection language."""
    users(ctx)
    pwned = tmp_path / "pwned"
    hostile = f"user_id.__class__.__init__.__globals__['os'].system('touch {pwned}') == 0"
    with pytest.raises(reports.ReportError, match="names starting with '__' are not allowed"):
        run("campaign", tmp_path, query=hostile)
    assert not pwned.exists()
    assert dl.list_deliveries(ctx) == []



def test_campaign_with_defaults_on_a_fresh_database_explains_and_saves_nothing(env, ctx, tmp_path):
    nb = run("campaign", tmp_path)
    assert "No users to select from" in shown(nb)
    assert "nothing was saved" in shown(nb)
    assert dl.list_deliveries(ctx) == []


def test_issue15_campaign_with_language_ja_shows_the_r13_confirmation_in_japanese(
    env, ctx, tmp_path
):
    """``papermill -p language ja``: the headline, the confirmation table, the diagnosis
    (R4) and the markdown around them in Japanese; nothing saved (R13)."""
    users(ctx)
    accounts.add_tickets(ctx, 15)  # 10 recipients × 2 messages need 20
    nb = run("campaign", tmp_path, language="ja")
    text = shown(nb)
    assert "**宛先 10件** にメッセージ 2通を 今すぐ（即時送信） に送ります" in text
    assert "**5枚不足**（残高 15枚）" in text  # R9 would refuse it
    for label in ("対象にしたユーザー", "必要なチケット", "チケット残高", "抽出結果"):
        assert label in text
    assert "20枚 (10 × 2)" in text
    assert "ユーザー 14人中 宛先 10件：" in text and "1人は電話番号がありません" in text
    assert "確認されていません：何も保存していません。" in text
    headings = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert headings[0].startswith("# 一斉SMSキャンペーン：送信前の確認")
    assert "missing from font" not in text  # the charts drew every glyph
    assert dl.list_deliveries(ctx) == []


def test_r13_campaign_shows_the_confirmation_and_competing_deliveries_and_saves_nothing(
    env, ctx, tmp_path
):
    users(ctx)
    accounts.add_tickets(ctx, 2000)
    tomorrow = (clock.now() + timedelta(days=1)).isoformat()
    competitor = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["明日のお知らせ"], at=tomorrow))
    sample = ROOT / "data" / "sample_users.csv"
    query, at = "tags.str.contains('vip', na=False)", (clock.now() + timedelta(days=2)).isoformat()
    nb = run("campaign", tmp_path, users_csv=str(sample), query=query, at=at)
    expected = dl.preview_bulk(ctx, ["x", "y"], users_files=[sample], query=query, at=at)
    text = shown(nb)
    assert f"**{expected.recipients:,} recipients** will get 2 message(s)" in text
    for reason in expected.excluded:
        assert reason in text
    assert all(number in text for number in expected.sample)  # masked sample
    assert f"#{competitor.delivery_id} bulk" in text and "before" in text  # the forecast
    assert "nothing was saved" in text
    assert images(nb) == 2  # exclusions by reason, ticket forecast
    assert not UNMASKED.search(text)
    assert [d.id for d in dl.list_deliveries(ctx)] == [competitor.delivery_id]


@pytest.mark.parametrize("later", [False, True], ids=["now", "scheduled"])
def test_r13_campaign_creates_the_delivery_only_when_confirmed(env, ctx, tmp_path, later):
    users(ctx)
    accounts.add_tickets(ctx, 100)
    at = (clock.now() + timedelta(hours=3)).isoformat() if later else None
    run("campaign", tmp_path, confirm=True, at=at)
    (delivery,) = dl.list_deliveries(ctx)
    assert (delivery.kind, delivery.recipients, delivery.messages) == ("bulk", 10, 2)
    sent = [x for x in outbox(ctx) if x["delivery_id"] == delivery.id]
    if later:
        assert delivery.status == "scheduled" and sent == []
        assert accounts.balance(ctx) == 100
    else:
        assert delivery.status == "sent"
        assert [(x["phone"], x["message_no"]) for x in sent] == [
            (e164(i), m) for i in range(1, 11) for m in (1, 2)
        ]
        assert accounts.balance(ctx) == 80


# --- delivery report (R14, R15) ---------------------------------------------------------


def test_report_with_defaults_on_a_fresh_database_explains_and_saves_nothing(env, ctx, tmp_path):
    nb = run("delivery_report", tmp_path)
    assert "No deliveries yet" in shown(nb)
    assert dl.list_deliveries(ctx) == []


def test_r14_report_shows_the_latest_delivery_masked_with_plots(env, ctx, tmp_path):
    original = failed_delivery(env)
    before = dl.list_deliveries(ctx)
    nb = run("delivery_report", tmp_path)  # delivery_id=None: the latest
    text = shown(nb)
    assert f"**Delivery {original}** (bulk) is **partially_sent**" in text
    assert images(nb) == 2  # status breakdown, error breakdown
    for reason in ("rejected_by_carrier", "insufficient_tickets", "opted_out"):
        assert reason in text
    assert "**3 failed pairs** to 2 numbers (2 more errors are never resent" in text
    assert masked(5) in text and masked(10) in text
    assert not UNMASKED.search(text)
    assert "Not resent" in text
    assert dl.list_deliveries(ctx) == before


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_r15_report_resend_sends_exactly_the_failed_pairs_once(env, ctx, tmp_path):
    original = failed_delivery(env)
    failed = pairs(dl.failed_pairs(ctx, original))
    assert failed == [(5, e164(5), 1), (10, e164(10), 1), (10, e164(10), 2)]
    accounts.add_tickets(ctx, 10)
    run("delivery_report", tmp_path, delivery_id=original, resend=True)
    resend = dl.list_deliveries(ctx)[0]
    assert (resend.kind, resend.resend_of, resend.status) == ("resend", original, "sent")
    assert pairs(dl.delivery_items(ctx, resend.id)) == failed
    lines = [x for x in outbox(ctx) if x["delivery_id"] == resend.id]
    assert sorted((x["phone"], x["message_no"]) for x in lines) == [p[1:] for p in failed]
    # running it again with resend=True (a papermill re-run) does not send them twice
    again = reports.DeliveryReport.load(ctx, original).resend(True)
    assert "Nothing to resend" in str(again)
    assert dl.list_deliveries(ctx)[0].id == resend.id
    # the report of the original now says the failures were repaired, not unretryable
    note = str(reports.DeliveryReport.load(ctx, original).failed_note())
    assert f"3 failed pairs were taken care of (resent in #{resend.id})" in note
    assert "2 more are never resent" in note


# --- the library behind them ------------------------------------------------------------


def test_r10_forecast_spends_the_balance_in_send_order(ctx):
    """Scheduled deliveries reserve nothing: whoever goes first spends first."""
    add_users(ctx, [mobile(i) for i in range(1, 21)])
    accounts.add_tickets(ctx, 30)

    def schedule(hours: float, query: str) -> int:
        at = (clock.now() + timedelta(hours=hours)).isoformat()
        return dl.create_bulk(ctx, dl.preview_bulk(ctx, ["a"], at=at, query=query)).delivery_id

    first = schedule(1, "user_id != 'none'")  # 20 tickets, in 1 h
    last = schedule(3, "user_id in ['u1', 'u2', 'u3', 'u4', 'u5', 'u6', 'u7', 'u8', 'u9', 'u10']")
    frame = reports.ticket_forecast(ctx, 15, clock.now() + timedelta(hours=2), 30)
    assert list(frame.index) == [f"#{first} bulk", "this campaign", f"#{last} bulk"]
    assert frame["vs this campaign"].tolist() == ["before", "", "after"]
    assert frame["tickets needed"].tolist() == [20, 15, 10]
    assert frame["balance before"].tolist() == [30, 10, 0]
    assert frame["short"].tolist() == [0, 5, 10]
    assert frame["balance after"].tolist() == [10, 0, 0]


def test_run_report_refuses_before_starting_a_kernel(settings, tmp_path):
    with pytest.raises(NotFoundError, match="no deliveries yet"):
        reports.run_report(None, tmp_path / "r.html", database_url=settings.database_url)
    with pytest.raises(NotFoundError, match="no delivery 7"):
        reports.run_report(7, tmp_path / "r.html", database_url=settings.database_url)
    assert not (tmp_path / "r.html").exists()


def test_run_report_names_the_failing_cell(tmp_path):
    """A notebook that fails becomes one clear ReportError, not a papermill traceback."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": ""}
    nbformat.write(nb, tmp_path / "bad.ipynb")
    with pytest.raises(reports.ReportError, match=r"bad\.ipynb stopped in cell 1: ZeroDivision"):
        reports.execute(tmp_path / "bad.ipynb", tmp_path / "bad.out.ipynb", cwd=tmp_path)


# --- replies (issue 17) -------------------------------------------------------------------


def test_r16_report_counts_replies_and_lists_those_to_review_masked_also_in_html(
    env, ctx, tmp_path
):
    """Every reply since the delivery started, counted by what smsops did with it; the ones
    a person must read listed with masked senders (and a number quoted in a text masked),
    in the notebook and in its HTML export."""
    from smsops.services import inbound

    original = failed_delivery(env)
    inbound.handle_reply(ctx, e164(1), "STOP")  # opted out
    inbound.handle_reply(ctx, e164(5), f"停止しないで。妻の番号は{mobile(77)}です")  # review
    inbound.handle_reply(ctx, e164(10), "配信停止ですか？")  # review (a question)
    inbound.handle_reply(ctx, e164(2), "ありがとう")  # ignored
    nb = run("delivery_report", tmp_path, delivery_id=original)
    text = shown(nb)
    assert "**4 replies** since" in text
    assert "1 opted_out, 2 review, 1 ignored" in text
    assert "smsops replies list --action review" in text
    assert masked(5) in text and masked(10) in text and "配信停止ですか" in text
    assert "ありがとう" not in text  # only the ones to review are listed
    assert not UNMASKED.search(text)
    html = reports.export_html(nb, "report")
    assert "Replies" in html and masked(5) in html and masked(10) in html
    assert not UNMASKED.search(html)
