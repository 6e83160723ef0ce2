"""``--help`` in the reader's language (#15).

The help texts stay English where they are written (docstrings, ``help=``); the root
group records each one when it is built (:func:`english`) and, when a command line runs,
puts each in the reader's language (:func:`speak`) — the catalog's msgid is the English
text as written. typer's panel titles (Options, Arguments, Commands) are named through
its own hook, each parameter's and command's ``rich_help_panel``. ``Usage:``, typer's
``[required]`` and click's usage errors stay as typer prints them.

The catalog gets the texts from :func:`extract`, a Babel extraction method (babel.cfg)
that builds the real command tree: nothing is marked twice, and a command added with help
is in the next ``make catalogs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from typer.core import TyperArgument

from smsops.i18n import N_, language, translations

# typer's own titles of its help panels, which a parameter or command without a
# ``rich_help_panel`` goes under
PANELS = {
    "argument": N_("Arguments"),
    "option": N_("Options"),
    "command": N_("Commands"),
}

# (object, attribute, English text): what :func:`speak` sets
Recorded = list[tuple[Any, str, str]]


def english(cmd: Any, help_option: Any, *, listed: bool) -> Recorded:
    """The help texts of ``cmd``, its parameters and its ``--help``, and their panel
    titles, as written. ``listed``: ``cmd`` is listed in a group's Commands panel."""
    found: Recorded = []
    for attr in ("help", "short_help"):
        if getattr(cmd, attr, None):
            found.append((cmd, attr, getattr(cmd, attr)))
    if listed:
        found.append((cmd, "rich_help_panel", cmd.rich_help_panel or PANELS["command"]))
    for param in [*cmd.params, *([help_option] if help_option is not None else [])]:
        if getattr(param, "help", None):
            found.append((param, "help", param.help))
        kind = "argument" if isinstance(param, TyperArgument) else "option"
        found.append((param, "rich_help_panel", param.rich_help_panel or PANELS[kind]))
    return found


def fold_long_runs(cmd: Any) -> None:
    """Let ``cmd``'s help fold Japanese onto the next line instead of cutting it off.

    rich wraps text at spaces only; in a table cell (every option's help, a group's list
    of commands) a run longer than the cell — a Japanese sentence has no spaces — is cut
    off with "…" unless the text's overflow is "fold", as rich's maintainers advise
    (Textualize/rich#2494). typer offers no setting for it, so while a command formats its
    help (and only then: typer's rich_utils costs 40 ms to import), its texts are made
    with fold in Japanese. English is left as typer renders it."""
    original = cmd.format_help

    def format_help(ctx: Any, formatter: Any) -> Any:
        if language() == "ja":
            _folding_rich_text()
        return original(ctx, formatter)

    cmd.format_help = format_help


def _folding_rich_text() -> None:
    from rich.text import Text
    from typer import rich_utils

    make = getattr(rich_utils, "_make_rich_text", None)
    if make is None or getattr(make, "folds", False):
        return  # another typer: its help may cut Japanese off, but works

    def folding(**kwargs: Any) -> Any:
        made = make(**kwargs)
        if isinstance(made, Text) and language() == "ja":
            made.overflow = "fold"
        return made

    folding.folds = True  # type: ignore[attr-defined]
    setattr(rich_utils, "_make_rich_text", folding)  # noqa: B010


def speak(recorded: Recorded) -> None:
    """Put every recorded text in the reader's language (English: as written)."""
    t = translations()
    for obj, attr, text in recorded:
        setattr(obj, attr, t.gettext(text))


def extract(fileobj: Any, keywords: Any, comment_tags: Any, options: Any) -> Iterator[Any]:
    """Babel extraction method for the CLI's root module (babel.cfg): the marked strings
    of the file itself (as the ``python`` method finds them), then every help text of the
    command tree, each once, with the first command that shows it as its comment."""
    from babel.messages.extract import extract_python

    yield from extract_python(fileobj, keywords, comment_tags, options)

    import typer

    from smsops.cli import app

    root = typer.main.get_command(app)
    seen: set[str] = set()
    for path, text in root.help_texts():  # type: ignore[attr-defined]
        if text not in seen:
            seen.add(text)
            yield 0, None, text, [f"help: {path}"]
