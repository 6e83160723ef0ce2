"""Issue #15, 日本語で: the language a person reads, and what smsops says in Japanese.

The CLI runs for real (in this process, or as ``smsops`` in a fresh one for the locale);
the catalog is the repository's own ``smsops/locale/ja/LC_MESSAGES/smsops.po``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from support import mobile

from smsops import i18n
from smsops.refusals import human, localize


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch):
    """No SMSOPS_LANG, no locale, no account default: each test sets what it reads."""
    for name in ("SMSOPS_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    i18n.set_account_default(None)
    yield monkeypatch
    i18n.set_account_default(None)


def test_issue15_language_order_smsops_lang_then_locale_then_account_then_english(clean):
    assert i18n.language() == "en"
    i18n.set_account_default("ja")
    assert i18n.language() == "ja"  # nothing else chooses: the account's default
    clean.setenv("LANG", "C.UTF-8")
    assert i18n.language() == "ja"  # C chooses nothing
    clean.setenv("LANG", "en_US.UTF-8")
    assert i18n.language() == "en"  # the locale chooses before the account
    clean.setenv("LANG", "ja_JP.UTF-8")
    i18n.set_account_default(None)
    assert i18n.language() == "ja"
    clean.setenv("LC_ALL", "en_GB.UTF-8")
    assert i18n.language() == "en"  # LC_ALL overrides LANG
    clean.setenv("SMSOPS_LANG", "ja")
    assert i18n.language() == "ja"  # SMSOPS_LANG overrides the locale
    clean.setenv("SMSOPS_LANG", "fr")
    assert i18n.language() == "en"  # one smsops does not speak chooses nothing


def test_issue15_japanese_numbers_and_dates(clean):
    clean.setenv("SMSOPS_LANG", "ja")
    assert i18n.tickets(1550) == "1,550枚"
    at = datetime(2026, 12, 3, 1, 0, tzinfo=ZoneInfo("UTC"))
    assert i18n.when(at, "Asia/Tokyo") == "2026年12月3日 10:00"
    assert i18n.local_time("2026-12-03T10:00:00+09:00") == "2026年12月3日 10:00"
    clean.setenv("SMSOPS_LANG", "en")
    assert i18n.tickets(1) == "1 ticket"
    assert i18n.tickets(1550) == "1,550 tickets"
    assert i18n.when(at, "Asia/Tokyo") == "2026-12-03T10:00:00+09:00"


def test_issue15_r9_refusal_translated_by_template_with_numbers(clean):
    line = (
        "R9: not enough tickets: needed 1550, balance 1000, shortfall 550 "
        "(buy more with `smsops tickets add N`)"
    )
    assert localize(line) == line  # English is left as it is
    clean.setenv("SMSOPS_LANG", "ja")
    assert localize(line) == (
        "R9: チケットが足りません：必要 1,550枚、残高 1,000枚、不足 550枚"
        "（`smsops tickets add N` で購入してください）"
    )


def test_issue15_r4_diagnosis_clause_by_clause(clean):
    clean.setenv("SMSOPS_LANG", "ja")
    diagnosis = (
        "0 recipients from 150 users: 120 users have no phone number, 30 users have numbers "
        "that are not Japanese mobiles (landline, toll-free, IP phone, unallocated or foreign)"
    )
    assert localize(diagnosis) == (
        "ユーザー 150人中 宛先 0件：120人は電話番号がありません、30人は日本の携帯電話番号では"
        "ありません（固定電話、フリーダイヤル、IP電話、未割当、海外の番号）"
    )
    # a clause no template knows stays English rather than being guessed at
    assert localize("0 recipients: something new") == "宛先 0件：something new"


def test_issue15_mo_is_compiled_when_missing(tmp_path: Path, clean):
    po = i18n.catalog_path("ja")
    mo = tmp_path / "smsops.mo"
    i18n.compile_catalog(po, mo)
    import gettext

    with mo.open("rb") as fh:
        t = gettext.GNUTranslations(fh)
    assert t.gettext("Recipients") == "宛先"
    assert t.ngettext("{n} ticket", "{n} tickets", 5) == "{n}枚"


def _refused_setup(cli) -> None:
    users = cli.tmp / "users.csv"
    users.write_text(
        "user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(3)), encoding="utf-8"
    )
    cli("account", "set", "--plan", "standard")
    cli("users", "import", str(users))
    cli("tickets", "add", "4")


def test_issue15_r9_cli_refusal_in_japanese_json_unchanged(cli):
    _refused_setup(cli)
    cli.env["SMSOPS_LANG"] = "ja"
    result = cli("bulk", "create", "-m", "こんにちは", "-m", "また明日", "--yes", code=1)
    assert "R9: チケットが足りません：必要 6枚、残高 4枚、不足 2枚" in result.stderr
    doc = json.loads(cli("bulk", "create", "-m", "a", "-m", "b", "--yes", "--json", code=1).stdout)
    assert doc["error"] == "tickets"
    assert doc["message"].startswith("R9: not enough tickets: needed 6, balance 4, shortfall 2")
    assert (doc["needed"], doc["balance"], doc["shortfall"]) == (6, 4, 2)


def test_issue15_r13_confirmation_and_history_in_japanese(cli):
    _refused_setup(cli)
    cli.env["SMSOPS_LANG"] = "ja"
    preview = cli("bulk", "preview", "-m", "セール開始", "--at", "2099-12-03 10:00").stdout
    assert "宛先 3" in preview
    assert "送信日時 2099年12月3日 10:00" in preview
    assert "必要 3枚（3件 × 1通）、残高 4枚 — 足りています" in preview
    assert "ユーザー 3人中 宛先 3件" in preview
    created = cli("bulk", "create", "-m", "セール開始", "--yes").stdout
    assert "配信 1：" in created and "送信 3件" in created
    listing = cli("deliveries", "list").stdout
    assert "種類" in listing and "状態" in listing
    assert "bulk" in listing and "sent" in listing  # kinds and statuses stay as they are
    shown = cli("deliveries", "show", "1").stdout
    assert "電話番号" in shown and "送信数" in shown
    doc = json.loads(cli("deliveries", "show", "1", "--json").stdout)
    assert doc["delivery"]["status"] == "sent" and set(doc["items"][0]) >= {"phone", "status"}


def test_issue15_account_language_is_the_default(cli):
    _refused_setup(cli)
    cli.env["SMSOPS_LANG"] = ""  # the environment says nothing: the account decides
    cli.env["LANG"] = "C.UTF-8"
    doc = json.loads(cli("account", "set", "--language", "ja", "--json").stdout)
    assert doc["language"] == "ja"
    result = cli("bulk", "create", "-m", "a", "-m", "b", "--yes", code=1)
    assert "チケットが足りません" in result.stderr
    cli.env["SMSOPS_LANG"] = "en"  # a person's own choice wins over the account's
    result = cli("bulk", "create", "-m", "a", "-m", "b", "--yes", code=1)
    assert "not enough tickets" in result.stderr
    refused = cli("account", "set", "--language", "fr", code=1)
    assert "--language" in refused.stderr and "ja or en" in refused.stderr


def test_issue15_locale_ja_jp_refusal_as_the_real_cli(tmp_path: Path):
    """The issue's "must show": LANG=ja_JP.UTF-8 smsops bulk create … with too few tickets
    prints the refusal in Japanese naming needed, balance and shortfall; exit 1."""
    env = {k: v for k, v in os.environ.items() if k not in ("SMSOPS_LANG", "LC_ALL", "LC_MESSAGES")}
    env |= {
        "LANG": "ja_JP.UTF-8",
        "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}",
        "SMSOPS_OUTBOX": str(tmp_path / "outbox.jsonl"),
    }
    users = tmp_path / "users.csv"
    users.write_text("user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(775)))
    smsops = [sys.executable, "-m", "smsops.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*smsops, *args], env=env, capture_output=True, text=True, timeout=120
        )

    for args in (("account", "set", "--plan", "standard"), ("users", "import", str(users))):
        assert run(*args).returncode == 0
    assert run("tickets", "add", "1000").returncode == 0
    refused = run("bulk", "create", "-m", "セール", "-m", "明日まで", "--yes")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "smsops: R9: チケットが足りません：必要 1,550枚、残高 1,000枚、不足 550枚"
        "（`smsops tickets add N` で購入してください）"
    )
    assert "Traceback" not in refused.stderr


def test_issue15_japanese_chart_draws_every_glyph_else_english_and_one_note(clean):
    """Charts in Japanese use a Japanese font from matplotlib's font manager (Noto Sans CJK
    JP here, fonts-noto-cjk): drawing one warns of no missing glyph (no tofu). Without
    such a font the labels stay English and the report says so once."""
    import io
    import warnings

    from smsops.reports.common import _figure, chart_text, charts_in_language, font_note

    clean.setenv("SMSOPS_LANG", "ja")
    assert charts_in_language()
    fig, ax = _figure(4, 2)
    ax.set_title(chart_text("Status of every (number, message) pair"))
    assert ax.get_title() == "すべての（番号、メッセージ）の組の状態"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph … missing from font(s)" would raise
        fig.savefig(io.BytesIO(), format="png")
    assert font_note() is None
    assert not charts_in_language(("No Such Font JP",))
    note = font_note(("No Such Font JP",))
    assert note is not None and "日本語フォントが見つかりません" in str(note)
    clean.setenv("SMSOPS_LANG", "en")
    assert font_note(("No Such Font JP",)) is None  # English needs no Japanese font


# --- the refusals of common failures, each in Japanese (a review found them English) ----

# What a Japanese reader may still see in Latin letters: quoted values, paths, commands in
# backticks, options, variable names. Two English words in a row after those are taken
# out are a line nobody translated.
_NOT_PROSE = re.compile(
    r"'[^']*'|`[^`]*`|\S*/\S*|--[\w-]+|SMSOPS_\w+|[\w.-]+\.(?:csv|jsonl|db)\b|python -c .*\)"
)


def _english_left(line: str) -> list[str]:
    return re.findall(r"\b[A-Za-z]{2,}(?:[ ,]+[A-Za-z]{2,})+\b", _NOT_PROSE.sub(" ", line))


def _japanese(line: str) -> bool:
    return re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", line) is not None


def _failures(cli) -> list[tuple[str, dict[str, str], tuple[str, ...]]]:
    """(what, environment, command) of the failures a person meets first."""
    tmp = cli.tmp
    (tmp / "bad.csv").write_text(
        f"user_id,phone\nu1,{mobile(1)}\n,{mobile(2)}\nu1,9.01235E+09\nu4,1,2\n", encoding="utf-8"
    )
    (tmp / "nohead.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (tmp / "mixed.csv").write_bytes(b"user_id,phone\nu1,\x82\xa0\xe3\x81\x82\n")
    (tmp / "blocker").write_text("a file where the outbox's folder should be")
    return [
        ("bad CSV rows", {}, ("users", "import", str(tmp / "bad.csv"))),
        ("missing columns", {}, ("users", "import", str(tmp / "nohead.csv"))),
        ("unreadable encoding", {}, ("users", "import", str(tmp / "mixed.csv"))),
        ("a missing file", {}, ("users", "import", str(tmp / "none.csv"))),
        ("unknown gateway", {"SMSOPS_GATEWAY": "sms"}, ("tickets", "balance")),
        ("bad config value", {"SMSOPS_LEASE_SECONDS": "0"}, ("tickets", "balance")),
        ("not a number", {"SMSOPS_CHUNK_SIZE": "many"}, ("tickets", "balance")),
        ("bad database URL", {"SMSOPS_DATABASE_URL": "smsops.db"}, ("tickets", "balance")),
        (
            "outbox folder cannot be made",
            {"SMSOPS_OUTBOX": str(tmp / "blocker" / "outbox.jsonl")},
            ("send", mobile(1), "-m", "hi"),
        ),
        (
            "an output file in a missing folder",
            {},
            ("bulk", "preview", "-m", "hi", "--excluded", str(tmp / "no" / "x.csv")),
        ),
    ]


def test_issue15_common_failures_refused_in_japanese_json_stays_english(cli):
    cli("tickets", "add", "5")
    base = dict(cli.env)
    for what, env, args in _failures(cli):
        cli.env.clear()
        cli.env.update(base | env | {"SMSOPS_LANG": "en"})
        english = cli(*args, code=1).stderr.strip()
        assert english.startswith("smsops: ") and _english_left(english), (what, english)
        doc = json.loads(cli(*args, "--json", code=1).stdout)
        cli.env["SMSOPS_LANG"] = "ja"
        japanese = cli(*args, code=1).stderr.strip()
        assert _japanese(japanese) and not _english_left(japanese), (what, japanese)
        assert json.loads(cli(*args, "--json", code=1).stdout) == doc, what  # unchanged
        assert doc["message"] in english  # --json keeps the English line


def test_issue15_bad_csv_rows_each_in_japanese_where_and_what(cli):
    cli.env["SMSOPS_LANG"] = "ja"
    cli("tickets", "balance")
    (bad, *_) = _failures(cli)
    line = cli(*bad[2], code=1).stderr.strip()
    assert line == (
        f"smsops: {cli.tmp / 'bad.csv'}：4件の問題："
        "データ行 2、列 'user_id'：空です（必須）（3行目）。"
        "データ行 3、列 'user_id'：'u1' はデータ行 1 と重複しています（user_id は一意でなければ"
        "なりません）（4行目）。"
        "データ行 3、列 'phone'：電話番号が Excel で指数表記に変えられています。列を文字列形式"
        "にして書き出し直してください（4行目）。"
        "データ行 4：項目が 3個です（2個のはず）（5行目）"
    )


def test_issue15_error_raised_with_a_template_renders_it_english_stays_its_str(clean):
    import pickle

    from smsops.errors import ConfigError, StoreError, Text

    line = Text("SMSOPS_DATABASE_URL {url} is not a database URL", url="'x'")
    error = pickle.loads(
        pickle.dumps(StoreError(Text("cannot open the database: {detail}", detail=line)))
    )
    assert (
        str(error)
        == error.message
        == "cannot open the database: SMSOPS_DATABASE_URL 'x' is not a database URL"
    )
    assert human(error) == error.message  # English: the line itself
    clean.setenv("SMSOPS_LANG", "ja")
    assert (
        human(error)
        == "データベースを開けません：SMSOPS_DATABASE_URL 'x' はデータベースの URL ではありません"
    )
    assert str(error) == error.to_dict()["message"] == error.message  # programs read English
    # a number in a value is written as the reader writes it; a phone number stays masked
    parts = [
        Text("Input should be greater than or equal to {ge}", ge=1550),
        Text("{phone} opted out; it must not be sent to", phone="09012345678"),
    ]
    joined = ConfigError(Text.joined(parts))
    assert joined.message == (
        "Input should be greater than or equal to 1550; "
        "090-****-5678 opted out; it must not be sent to"
    )
    assert (
        human(joined)
        == "1,550 以上の値を指定してください。090-****-5678 は配信停止済みです。送信できません"
    )


def test_issue15_users_watch_pass_in_japanese_json_unchanged(cli):
    drops = cli.tmp / "drops"
    drops.mkdir()
    (drops / "u.csv").write_text(f"user_id,phone\nu1,{mobile(1)}\nu2,{mobile(2)}\n")
    (drops / "bad.csv").write_text(f"user_id,phone\n,{mobile(3)}\nu4,9.01E+09\n")
    settled = time.time() - 3600  # written an hour ago: whole, not still being written
    for f in drops.iterdir():
        os.utime(f, (settled, settled))
    cli.env["SMSOPS_LANG"] = "ja"
    shown = cli("users", "watch", str(drops)).stdout
    assert (
        "拒否（何も取り込んでいません）：2件の問題（データ行 1、列 user_id：空です（必須）。…）"
        in shown
    )
    assert "2行を取り込みました" in shown and "取り込み済み" in shown
    assert "取り込み 1件、拒否 1件、スキップ（重複） 0件、書き込み中 0件" in shown
    for line in shown.splitlines():
        assert not _english_left(line), line
    missing = cli("users", "watch", str(cli.tmp / "none"), code=1).stderr
    assert "ドロップフォルダー" in missing and "そのフォルダーはありません" in missing
    (drops / "processed" / "u.csv").rename(drops / "again.csv")
    os.utime(drops / "again.csv", (settled, settled))
    doc = json.loads(cli("users", "watch", str(drops), "--json").stdout)
    assert doc["files"][0]["outcome"] == "skipped_duplicate"  # values stay as they are
    assert doc["files"][0]["detail"].startswith("skipped: the same content as u.csv")


def test_issue15_demo_narrates_in_japanese(tmp_path: Path):
    """scripts/demo (make demo) as a person runs it, with SMSOPS_LANG=ja: each line of
    narration (its `say "…"` lines, catalog entries through babel.cfg) is Japanese."""
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {
        "SMSOPS_LANG": "ja",
        "SMSOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "SMSOPS_OUTBOX": str(tmp_path / "outbox.jsonl"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    run = subprocess.run(
        ["bash", "scripts/demo"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    said = [
        line.split("# ", 1)[1].removesuffix("\x1b[0m")
        for line in run.stdout.splitlines()
        if line.startswith("\x1b[3m# ")
    ]
    script = (root / "scripts" / "demo").read_text()
    assert len(said) == script.count("\nsay ") >= 5
    for line in said:
        assert _japanese(line) and not _english_left(line), line
    assert f"{tmp_path / 'outbox.jsonl'} に 1,550行。最初の1行：" in said


def test_issue15_optout_add_remove_import_in_japanese_json_unchanged(cli):
    cli.env["SMSOPS_LANG"] = "ja"
    path = cli.tmp / "optouts.csv"
    path.write_text(f"phone\n{mobile(1)}\n{mobile(2)}\n", encoding="utf-8")
    assert cli("optout", "import", str(path)).stdout.strip() == (
        "2件追加しました。配信停止リストは 2件です"
    )
    assert (
        cli("optout", "add", mobile(3)).stdout.strip() == "追加しました。配信停止リストは 3件です"
    )
    assert cli("optout", "add", mobile(3)).stdout.strip() == (
        "すでに登録されています。配信停止リストは 3件です"
    )
    assert (
        cli("optout", "remove", mobile(3)).stdout.strip()
        == "削除しました。配信停止リストは 2件です"
    )
    doc = json.loads(cli("optout", "add", mobile(3), "--json").stdout)
    assert (doc["added"], doc["optouts_total"]) == (True, 3)
    cli.env["SMSOPS_LANG"] = "en"
    assert cli("optout", "add", mobile(3)).stdout.strip() == "already listed; 3 on the opt-out list"
    assert cli("optout", "import", str(path)).stdout.strip() == (
        "0 numbers added; 3 on the opt-out list"
    )


def test_issue15_a_list_of_allowed_values_reads_as_japanese_not_english_or(cli):
    cli.env |= {"SMSOPS_GATEWAY": "sms", "SMSOPS_LANG": "ja"}
    line = cli("tickets", "balance", code=1).stderr.strip()
    assert line == "smsops: SMSOPS_GATEWAY='sms'：'outbox'、'kannel' のいずれかを指定してください"
    cli.env["SMSOPS_LANG"] = "en"
    line = cli("tickets", "balance", code=1).stderr.strip()
    assert line == "smsops: SMSOPS_GATEWAY='sms': Input should be 'outbox' or 'kannel'"


def test_issue15_three_allowed_values_are_listed_with_japanese_commas(clean):
    from typing import Literal

    from pydantic import BaseModel, ValidationError

    from smsops.settings import _explain

    class Three(BaseModel):
        mode: Literal["a", "b", "c"]

    with pytest.raises(ValidationError) as raised:
        Three(mode="z")  # type: ignore[arg-type]
    said = _explain(raised.value)
    assert str(said) == "SMSOPS_MODE='z': Input should be 'a', 'b' or 'c'"
    clean.setenv("SMSOPS_LANG", "ja")
    assert said.render() == "SMSOPS_MODE='z'：'a'、'b'、'c' のいずれかを指定してください"
