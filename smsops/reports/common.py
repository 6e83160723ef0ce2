"""Shared pieces of the notebook reports: notes, colours, small tables and figures."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from smsops.errors import ReportError as ReportError  # defined there, importable here
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
_LABELS = {"sent_at": "recorded at", "dlr_status": "delivery report", "dlr_at": "reported at"}
STATUS_COLORS = {"sent": GREEN, "error": RED, "pending": GREY, "cancelled": LIGHT}
REASON_LABELS = {
    "phone_field_disabled": "phone field disabled (R2)",
    "no_phone": "no phone number (R2)",
    "malformed": "malformed number (R3)",
    "not_mobile": "not a JP mobile (R3)",
    "opted_out": "opted out (R16)",
    "duplicate": "duplicate number (R5)",
}


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


def notebook_context(database_url: str | None = None) -> Context:
    """The Context for a notebook session: ``database_url`` or the ``SMSOPS_*`` settings.

    A notebook opened from ``notebooks/`` (Jupyter starts kernels there) works from the
    project root, so relative paths (``data/…``) mean what they mean to the CLI."""
    here = Path.cwd()
    if here.name == "notebooks" and (here.parent / "pyproject.toml").exists():
        os.chdir(here.parent)
    pd.set_option("display.max_rows", ROWS + 20)
    pd.set_option("display.max_colwidth", 80)
    settings = Settings() if database_url is None else Settings(database_url=database_url)
    return Context.open(settings)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _key_values(rows: dict[str, object]) -> pd.DataFrame:
    frame = pd.DataFrame({"value": [_text(v) for v in rows.values()]})
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
