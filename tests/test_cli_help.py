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
