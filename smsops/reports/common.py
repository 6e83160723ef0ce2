"""Shared pieces of the notebook reports: notes, colours, small tables and figures."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from smsops import i18n
from smsops.domain.vocabulary import Exclusion, ItemStatus
from smsops.errors import ReportError as ReportError  # defined there, importable here
from smsops.i18n import N_, _, language
from smsops.services.context import Context
from smsops.settings import Settings

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "python3"  # ipykernel's own spec: jupyter_client runs it with this interpreter
ROWS = 100  # rows of a detail table shown (the CLI and --json give everything)

GREEN, RED, GREY, LIGHT, BLUE, ORANGE = (
    "#2e7d32",
    "#c62828",
    "#9e9e9e",
    "#d7d7d7",
    "#1565c0",
    "#ef6c00",
)
# Labels are catalog entries (#15), translated where they are shown: use label().
_LABELS = {
    "sent_at": N_("recorded at"),
    "dlr_status": N_("delivery report"),
    "dlr_at": N_("reported at"),
    "user_id": N_("user id"),
    "phone": N_("phone"),
    "message_no": N_("message no"),
    "status": N_("status"),
    "error": N_("error"),
}
STATUS_COLORS: dict[str, str] = {
    ItemStatus.SENT: GREEN,
    ItemStatus.ERROR: RED,
    ItemStatus.PENDING: GREY,
    ItemStatus.CANCELLED: LIGHT,
}
REASON_LABELS: dict[str, str] = {
    Exclusion.PHONE_FIELD_DISABLED: N_("phone field disabled (R2)"),
    Exclusion.NO_PHONE: N_("no phone number (R2)"),
    Exclusion.MALFORMED: N_("malformed number (R3)"),
    Exclusion.NOT_MOBILE: N_("not a JP mobile (R3)"),
    Exclusion.OPTED_OUT: N_("opted out (R16)"),
    Exclusion.DUPLICATE: N_("duplicate number (R5)"),
}
# Japanese fonts matplotlib may find, best first (fonts-noto-cjk, fonts-ipaexfont, macOS,
# Windows): a chart in Japanese drawn without one shows boxes (tofu) for every character.
CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans JP",
    "IPAexGothic",
    "IPAGothic",
    "Hiragino Sans",
    "Yu Gothic",
    "Meiryo",
    "TakaoPGothic",
)


def label(text: str) -> str:
    """A catalog entry (a table's label, a reason's meaning) in the reader's language."""
    return _(text)


def cjk_font(candidates: tuple[str, ...] = CJK_FONTS) -> str | None:
    """The first of ``candidates`` that matplotlib's font manager has, or None."""
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in candidates if name in have), None)


def charts_in_language(candidates: tuple[str, ...] = CJK_FONTS) -> bool:
    """Whether charts can be labelled in the reader's language: always in English; in
    Japanese when a Japanese font exists, which then comes first in matplotlib's
    sans-serif list (Latin text falls back to it too, as the font has Latin glyphs)."""
    if language() != "ja":
        return True
    font = cjk_font(candidates)
    if font is None:
        return False
    import matplotlib

    families = list(matplotlib.rcParams["font.sans-serif"])
    if families[:1] != [font]:
        matplotlib.rcParams["font.sans-serif"] = [font, *(f for f in families if f != font)]
    matplotlib.rcParams["font.family"] = "sans-serif"
    return True


def chart_text(text: str) -> str:
    """A chart's title, axis or legend text: in the reader's language when a font can draw
    it, else in English (:func:`font_note` says so)."""
    return _(text) if charts_in_language() else text


def font_note(candidates: tuple[str, ...] = CJK_FONTS) -> Note | None:
    """The one line a Japanese report shows when no Japanese font exists; None otherwise."""
    if charts_in_language(candidates):
        return None
    return Note(
        _(
            "_No Japanese font was found (install fonts-noto-cjk): the charts are labelled "
            "in English._"
        )
    )


@dataclass(frozen=True)
class Note:
    """A sentence for the analyst, shown as Markdown in a notebook (and as text elsewhere)."""

    text: str

    def _repr_markdown_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def notebook_context(database_url: str | None = None, language: str | None = None) -> Context:
    """The Context for a notebook session: ``database_url`` or the ``SMSOPS_*`` settings;
    ``language`` (``ja``/``en``, the notebook's parameter) chooses what it says, else
    ``SMSOPS_LANG``, the locale or the account's default (#15).

    A notebook opened from ``notebooks/`` (Jupyter starts kernels there) works from the
    project root, so relative paths (``data/…``) mean what they mean to the CLI."""
    here = Path.cwd()
    if here.name == "notebooks" and (here.parent / "pyproject.toml").exists():
        os.chdir(here.parent)
    pd.set_option("display.max_rows", ROWS + 20)
    pd.set_option("display.max_colwidth", 80)
    settings = Settings() if database_url is None else Settings(database_url=database_url)
    ctx = Context.open(settings)
    i18n.use(language)
    if language is None and not i18n.chosen_by_environment():
        from smsops.services.account import get_account

        i18n.set_account_default(get_account(ctx).language)
    return ctx


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return i18n.number(value)
    return str(value)


def _key_values(rows: Mapping[str, object]) -> pd.DataFrame:
    frame = pd.DataFrame({_("value"): [_text(v) for v in rows.values()]})
    frame.index = pd.Index(list(rows), name="")
    return frame


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _barh(ax: Any, labels: list[str], values: list[int], colors: list[str]) -> None:
    """Horizontal bars, first label on top, each annotated with its count."""
    ax.barh(labels, values, color=colors)
    ax.invert_yaxis()
    top = max(values, default=0) or 1
    for y, v in enumerate(values):
        ax.text(v + top * 0.01, y, f"{v:,}", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)


# --- the campaign notebook (R13) ------------------------------------------------------
