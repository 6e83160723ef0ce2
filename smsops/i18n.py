"""Japanese and English for what a person reads (#15): gettext catalogs, Japanese numbers
and dates.

The language is ``SMSOPS_LANG`` (``ja`` / ``en``), else the locale (``LANG=ja_JP.UTF-8``
→ Japanese; ``C``/``POSIX`` choose nothing), else the account's default
(``smsops account set --language ja``), else English. Only human text is translated:
``--json`` documents, column names, statuses and error codes never are.

The catalogs are ``smsops/locale/<lang>/LC_MESSAGES/smsops.po`` (managed with Babel:
``make catalogs``). The ``.mo`` that gettext reads is compiled from the ``.po`` when it is
missing or older — at ``make venv``, or on first use — beside the ``.po`` if that folder
is writable, else in the user's cache. Babel itself is imported only to compile a catalog
or to format a number or date in Japanese: a light command stays light
(tests/test_fast_start.py).
"""

from __future__ import annotations

import gettext
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

Language = Literal["en", "ja"]
LANGUAGES: tuple[Language, ...] = ("en", "ja")
DOMAIN = "smsops"
LOCALE_DIR = Path(__file__).parent / "locale"

_account_default: Language | None = None
_translations: dict[Language, gettext.NullTranslations] = {}


def _pick(value: str | None) -> Language | None:
    """``ja``, ``ja_JP.UTF-8``, ``en-US`` … → the language they name, if we have it."""
    if not value:
        return None
    head = value.strip().replace("-", "_").split("_")[0].split(".")[0].lower()
    return head if head in LANGUAGES else None  # type: ignore[return-value]


def parse_language(value: str) -> Language:
    """A language as a user typed it (``ja`` or ``en``); ValueError names the ones we have."""
    lang = value.strip().lower()
    if lang not in LANGUAGES:
        raise ValueError(f"{value!r} is not a language smsops speaks: ja or en")
    return lang  # type: ignore[return-value]


def _from_environment() -> Language | None:
    chosen = _pick(os.environ.get("SMSOPS_LANG"))
    if chosen:
        return chosen
    # the locale as POSIX reads it: LC_ALL overrides LC_MESSAGES overrides LANG; C, POSIX
    # and languages smsops does not speak choose nothing
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            return _pick(value)
    return None


def chosen_by_environment() -> bool:
    """Whether ``SMSOPS_LANG`` or the locale chooses the language (the account's default
    is then not needed)."""
    return _from_environment() is not None


def language() -> Language:
    """The language a person reads now (see the module's docstring for the order)."""
    return _chosen or _from_environment() or _account_default or "en"


_chosen: Language | None = None


def use(lang: str | None) -> None:
    """Speak ``lang`` from now on in this process, whatever the environment says: a
    notebook's ``language`` parameter (``papermill -p language ja``). None: back to the
    usual order. ValueError for a language smsops does not speak."""
    global _chosen
    _chosen = None if lang is None else parse_language(lang)


def set_account_default(lang: str | None) -> None:
    """The account's default language, read by a front door once the store is open."""
    global _account_default
    _account_default = _pick(lang)


def catalog_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def compile_catalog(po: Path, mo: Path) -> None:
    """Compile ``po`` to ``mo`` (fuzzy entries left out), replacing ``mo`` at once."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po.open("rb") as fh:
        catalog = read_po(fh)
    mo.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=mo.parent, prefix=f".{mo.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            write_mo(out, catalog, use_fuzzy=False)
        os.replace(temp, mo)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "smsops" / "locale"


def _mo_for(lang: Language) -> Path | None:
    """The compiled catalog of ``lang``, compiled now if missing or older than its .po."""
    po = catalog_path(lang)
    if not po.exists():
        return None
    for mo in (po.with_suffix(".mo"), _cache_dir() / lang / "LC_MESSAGES" / f"{DOMAIN}.mo"):
        try:
            if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
                return mo
            compile_catalog(po, mo)
            return mo
        except OSError:
            continue  # a read-only install: try the cache
    return None


def translations(lang: Language | None = None) -> gettext.NullTranslations:
    """The gettext translations of ``lang`` (default: :func:`language`)."""
    lang = lang or language()
    if lang not in _translations:
        mo = _mo_for(lang) if lang != "en" else None
        if mo is None:
            _translations[lang] = gettext.NullTranslations()
        else:
            with mo.open("rb") as fh:
                _translations[lang] = gettext.GNUTranslations(fh)
    return _translations[lang]


def _(message: str) -> str:
    """``message`` in the reader's language."""
    return translations().gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The form of ``singular``/``plural`` for ``n``, in the reader's language."""
    return translations().ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark ``message`` for the catalog without translating it (it is translated where it
    is shown)."""
    return message


# --- numbers and dates ------------------------------------------------------------------


def _babel_locale() -> str:
    return "ja_JP" if language() == "ja" else "en_US"


def number(n: object) -> str:
    """A number as the reader writes it: ``1,550`` (anything else as it is)."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return str(n)
    if language() == "en":
        return f"{n:,}"  # as Babel writes en_US, without importing it (a light command)
    from babel.numbers import format_decimal

    return format_decimal(n, locale=_babel_locale())


def tickets(n: int) -> str:
    """A count of tickets: ``1,550枚`` / ``1,550 tickets``."""
    return ngettext("{n} ticket", "{n} tickets", n).format(n=number(n))


def when(value: datetime, tz: str | None = None) -> str:
    """A moment in the account's zone: ``2026年12月3日 10:00`` in Japanese,
    ISO 8601 with its offset in English (``2026-12-03T10:00:00+09:00``)."""
    if tz is not None:
        from zoneinfo import ZoneInfo

        value = value.astimezone(ZoneInfo(tz))
    if language() != "ja":
        return value.isoformat(timespec="seconds")
    from babel.dates import format_datetime

    return format_datetime(value, "y年M月d日 H:mm", tzinfo=value.tzinfo, locale="ja_JP")


def local_time(iso: str) -> str:
    """An ISO 8601 time the store gave (already in the account's zone) as the reader
    writes it; English keeps the ISO text."""
    if language() != "ja":
        return iso
    try:
        value = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return when(value) if value.tzinfo else iso


# --- notebooks ---------------------------------------------------------------------------


def extract_notebook(
    fileobj: Any, keywords: object, comment_tags: object, options: object
) -> Iterator[tuple[int, str | None, str, list[str]]]:
    """Babel extraction method for ``.ipynb`` (babel.cfg): each markdown cell is one
    catalog entry, translated whole when a report is run (:func:`translate_markdown`)."""
    import json

    notebook = json.loads(fileobj.read().decode("utf-8"))
    for number_, cell in enumerate(notebook.get("cells", []), start=1):
        if cell.get("cell_type") == "markdown":
            source = "".join(cell.get("source", []))
            if source.strip():
                yield number_, None, source, [f"markdown cell {number_}"]


def translate_markdown(notebook: Any, lang: str | None = None) -> None:
    """Put each markdown cell of an nbformat ``notebook`` in ``lang`` (default: the
    reader's language)."""
    t = translations(parse_language(lang) if lang else None)
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.strip():
            cell.source = t.gettext(cell.source)


# --- the demo's narration (scripts/demo) -------------------------------------------------

_SAY = re.compile(r"""^\s*say\s+(["'])(.+?)\1""")


def extract_narration(
    fileobj: Any, keywords: object, comment_tags: object, options: object
) -> Iterator[tuple[int, str | None, str, list[str]]]:
    """Babel extraction method for shell scripts (babel.cfg): each ``say "…"`` line's text
    is one catalog entry."""
    for lineno, line in enumerate(fileobj.read().decode("utf-8").splitlines(), start=1):
        m = _SAY.match(line)
        if m:
            yield lineno, None, m.group(2), []


def main(argv: list[str]) -> int:
    """``python -m smsops.i18n TEXT [NAME=VALUE ...]``: TEXT in the reader's language, its
    ``{NAME}`` parts filled (whole numbers written as the reader writes them): how a shell
    script such as scripts/demo speaks from the same catalog."""
    if not argv:
        print("usage: python -m smsops.i18n TEXT [NAME=VALUE ...]", file=sys.stderr)
        return 2
    values: dict[str, object] = {}
    for pair in argv[1:]:
        name, _sep, value = pair.partition("=")
        values[name] = number(int(value)) if value.strip().isdigit() else value
    print(_(argv[0]).format(**values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
