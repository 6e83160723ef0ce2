"""Every command documents itself (#14), as sqlite-utils' ``tests/test_docs.py`` makes
sure: the command tree is walked from the real app, so a command added without help text,
or an option or argument without ``help=``, fails here by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer

from smsops.cli import app


def _walk(cmd: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    """``cmd`` and every command and group under it (typer vendors its own click)."""
    yield " ".join(("smsops", *path)), cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(typer.main.get_command(app), ()))


def test_the_walk_finds_the_command_tree():
    """A walk that found nothing would pass everything below."""
    names = {name for name, _ in COMMANDS}
    assert {"smsops bulk create", "smsops deliveries show", "smsops serve"} <= names
    assert len(COMMANDS) > 25


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_command_has_help(name, cmd):
    assert (cmd.help or "").strip(), f"{name} has no help text (give it a docstring)"


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_option_and_argument_has_help(name, cmd):
    missing = [
        param.opts[0] if param.param_type_name == "option" else (param.metavar or param.name)
        for param in cmd.params
        if not (getattr(param, "help", None) or "").strip()
    ]
    assert missing == [], f"{name}: no help= for {', '.join(map(str, missing))}"


# --- issue #15: --help in the reader's language ------------------------------------------


def _catalog():  # type: ignore[no-untyped-def]
    from babel.messages.pofile import read_po

    from smsops.i18n import catalog_path

    with catalog_path("ja").open("rb") as fh:
        return read_po(fh, locale="ja")


HELP_TEXTS = list(typer.main.get_command(app).help_texts())  # type: ignore[attr-defined]


def test_issue15_the_help_walk_finds_every_help_text():
    """A walk that found nothing would pass the completeness test below."""
    paths = {path for path, _ in HELP_TEXTS}
    assert {name for name, _ in COMMANDS} <= paths
    texts = {text for _, text in HELP_TEXTS}
    assert {"Print one JSON document.", "Options", "Commands", "Arguments"} <= texts
    assert all(cmd.help in texts for _, cmd in COMMANDS)
    assert all(p.help in texts for _, cmd in COMMANDS for p in cmd.params)


@pytest.mark.parametrize(
    "name", sorted({p for p, _ in HELP_TEXTS}), ids=sorted({p for p, _ in HELP_TEXTS})
)
def test_issue15_every_help_text_has_a_japanese_translation(name):
    ja = _catalog()
    missing = [
        text
        for path, text in HELP_TEXTS
        if path == name and not (ja.get(text) is not None and ja.get(text).string)
    ]
    assert missing == [], f"{name}: no Japanese in smsops.po (make catalogs) for {missing}"


def _smsops(*args: str, lang: str) -> str:
    """``smsops ARGS`` as a user runs it, 80 columns wide; its stdout."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_MESSAGES", "LANG")}
    env |= {"SMSOPS_LANG": lang, "COLUMNS": "80", "TERMINAL_WIDTH": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "smsops.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _prose(text: str) -> str:
    """The help's words without its box drawing and line breaks (rich wraps them)."""
    return "".join(ch for ch in text if ch not in "│╭╮╰╯─ \n")


def test_issue15_smsops_lang_ja_bulk_create_help_is_japanese():
    shown = _smsops("bulk", "create", "--help", lang="ja")
    words = _prose(shown)
    assert "確認のうえ一斉配信を保存し（R13）" in words
    assert "メッセージ。70文字まで、%tags%は使えません（R6、R7）。2通目は-mをもう一度。" in words
    assert "JSONドキュメントを1つ出力します。" in words
    assert "このヘルプを表示して終了します。" in words
    assert "╭─ オプション ─" in shown
    assert "--outside-window" in shown and "DATETIME" in shown  # names stay as they are
    # rich cuts a run without spaces off with "…" unless it folds: every word is there
    assert "…" not in shown
    assert "時間帯の終わりで一時停止せず最後まで送ります。" in words
    for english in ("Save a bulk delivery", "Print one JSON", "Show this message", "Options"):
        assert english not in shown


def test_issue15_top_level_help_is_japanese_english_by_default():
    shown = _smsops("--help", lang="ja")
    words = _prose(shown)
    assert "日本向けのSMS一斉配信" in words
    assert "╭─ コマンド ─" in shown
    assert "配信履歴（R14）：一覧、詳細、失敗、取り消し。" in words
    assert "Delivery history" not in shown and "…" not in shown
    english = _smsops("--help", lang="en")
    assert "Delivery history (R14): list, detail, failures and cancel." in english
    assert "╭─ Commands ─" in english and "配信" not in english


def test_issue15_help_follows_the_language_of_each_run(cli):
    """The CLI test runner builds the commands before it sets the environment: the
    language is the one of the run, not of the build."""
    cli.env["SMSOPS_LANG"] = "ja"
    assert "1つの番号を配信停止リストに加えます" in cli("optout", "add", "--help").stdout
    cli.env["SMSOPS_LANG"] = "en"
    assert "Add one number to the opt-out list" in cli("optout", "add", "--help").stdout
