"""What the analyst notebooks show: the campaign confirmation (R13) and the delivery report
(R14, R15) as frames, figures and short notes, plus :func:`run_report`, which executes the
report notebook with papermill and exports a standalone HTML file.

Notebooks call this module and nothing else needs it: it imports matplotlib, and papermill
and nbconvert only inside :func:`execute` and :func:`run_report`. Phone numbers in every
frame here are masked (``090-****-5678``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from smsops import clock
from smsops.domain.phones import mask_phones
from smsops.errors import NotFoundError, SmsopsError
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.settings import Settings

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
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


class ReportError(SmsopsError):
    """The report notebook could not be run or exported."""

    code = "report"


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


@dataclass
class Campaign:
    """A bulk delivery being prepared: its confirmation (R13) before anything is saved."""

    ctx: Context
    preview: dl.Preview

    @classmethod
    def preview_of(
        cls,
        ctx: Context,
        messages: Sequence[str],
        *,
        users_csv: str | Path | None = None,
        query: str | None = None,
        at: str | None = None,
    ) -> Campaign:
        """Select recipients from ``users_csv`` (or the stored users), optionally filtered
        by a pandas ``query``; refused like ``smsops bulk preview`` (R1, R6, R7, R12)."""
        files = [users_csv] if users_csv else []
        return cls(ctx, dl.preview_bulk(ctx, messages, at=at, users_files=files, query=query))

    @property
    def when(self) -> str:
        p = self.preview
        return clock.local_iso(p.scheduled_at, p.timezone) or "now (immediately)"

    def headline(self) -> Note:
        p = self.preview
        if p.selection.users == 0:
            return Note(
                "**No users to select from.** The user table is empty (a fresh database?). "
                "Import one with `smsops users import data/sample_users.csv`, or run this "
                "notebook with `users_csv='data/sample_users.csv'`. Nothing below can be sent."
            )
        if p.recipients == 0:
            return Note(f"**0 recipients — nothing can be sent (R4).** {p.diagnosis}.")
        tickets = (
            f"enough (balance {p.balance:,})"
            if not p.shortfall
            else f"**short by {p.shortfall:,}** (balance {p.balance:,}): creating it "
            "would be refused (R9) until more tickets are added"
        )
        later = ""
        short = int(self.forecast().loc["this campaign", "short"])
        if short and not p.shortfall:
            later = (
                f" **Warning:** deliveries waiting to go out before it will leave it "
                f"{short:,} tickets short at its send time (R10: the last pairs become errors)."
            )
        return Note(
            f"**{p.recipients:,} recipients** will get {len(p.messages)} message(s), sent "
            f"{self.when}. Tickets needed {p.tickets_needed:,}: {tickets}.{later} "
            "Nothing is saved until this notebook runs with `confirm=True`."
        )

    def confirmation(self) -> pd.DataFrame:
        """The R13 confirmation as one table: who, when, what, at what cost."""
        p = self.preview
        return _key_values(
            {
                "users considered": f"{p.selection.users:,}",
                "recipients": f"{p.recipients:,}",
                "send at": self.when,
                "messages": len(p.messages),
                "tickets needed": f"{p.tickets_needed:,} ({p.recipients:,} × {len(p.messages)})",
                "ticket balance": f"{p.balance:,}",
                "shortfall": f"{p.shortfall:,}",
                "selection": p.diagnosis,
            }
        )

    def exclusions(self) -> pd.DataFrame | None:
        """Users left out, per reason (R2–R5, R16)."""
        counts = self.preview.excluded
        if not counts:
            return None
        return pd.DataFrame(
            {
                "users": list(counts.values()),
                "meaning": [REASON_LABELS.get(r, r) for r in counts],
            },
            index=pd.Index(list(counts), name="reason"),
        )

    def exclusion_chart(self) -> Figure | Note:
        p = self.preview
        if p.selection.users == 0:
            return Note("_No users, so no chart._")
        labels = ["recipients", *(REASON_LABELS.get(r, r) for r in p.excluded)]
        values = [p.recipients, *p.excluded.values()]
        fig, ax = _figure(7, 0.45 * len(labels) + 1.2)
        _barh(ax, labels, values, [GREEN] + [ORANGE] * len(p.excluded))
        ax.set_title(f"{p.selection.users:,} users → {p.recipients:,} recipients", loc="left")
        ax.set_xlabel("users")
        return fig

    def sample(self, rows: int = 10) -> pd.DataFrame | Note:
        """The first recipients in send order, numbers masked."""
        r = self.preview.selection.recipients.head(rows)
        if r.empty:
            return Note("_No recipients._")
        return pd.DataFrame(
            {
                "phone": mask_phones(r["phone"]).to_numpy(),
                "user_id": r["user_id"].to_numpy(),
                "users sharing the number": r["user_ids"].list.len().to_numpy(),
            },
            index=pd.Index(r["seq"].to_numpy(), name="seq"),
        )

    def messages(self) -> pd.DataFrame:
        """Each message with its length as the network counts it (R6: at most 70)."""
        ms = self.preview.messages
        return pd.DataFrame(
            {
                "text": [m.text for m in ms],
                "length": [m.length for m in ms],
                "left of 70": [70 - m.length for m in ms],
            },
            index=pd.Index([m.number for m in ms], name="message"),
        )

    def forecast(self) -> pd.DataFrame:
        """This campaign among the other deliveries waiting to be sent, in send order."""
        p = self.preview
        return ticket_forecast(self.ctx, p.tickets_needed, p.scheduled_at, p.balance)

    def forecast_chart(self) -> Figure | Note:
        frame = self.forecast()
        if len(frame) <= 1:
            return Note(
                "_No other delivery is waiting to be sent: nothing competes for these tickets._"
            )
        return forecast_chart(frame, self.preview.balance)

    def create(self, confirm: bool) -> Note | pd.DataFrame:
        """Save the delivery only when ``confirm`` is true (R13); an immediate one is then
        sent at once, a scheduled one waits for its time (R12)."""
        if not confirm:
            return Note("**Not confirmed: nothing was saved.** Run with `confirm=True` to create.")
        created = dl.create_bulk(self.ctx, self.preview)
        result: dict[str, object] = created.to_dict()
        if self.preview.scheduled_at is None:
            sent = dispatch(self.ctx, created.delivery_id)
            result.update(status=sent.status, sent=sent.sent, errors=sent.errors)
            result["tickets_used"] = sent.tickets_used
        return _key_values(result)


def ticket_forecast(ctx: Context, needed: int, at: datetime | None, balance: int) -> pd.DataFrame:
    """Deliveries waiting to be sent (queued, scheduled) with a new one of ``needed`` tickets
    at ``at`` (None = now), in send order, and the balance each leaves. Scheduled deliveries
    reserve nothing (R10): whoever is sent first spends first, and a delivery that finds
    too few tickets sends a prefix and records the rest as errors."""
    tz = accounts.get_account(ctx).timezone
    now = clock.now()
    waiting = []
    for d in dl.list_deliveries(ctx):
        if d["status"] not in ("queued", "scheduled"):
            continue
        due = datetime.fromisoformat(d["scheduled_at"] or d["created_at"]).astimezone(UTC)
        if d["kind"] == "resend":  # exactly its failed pairs, not recipients × messages
            tickets = len(dl.delivery_items(ctx, d["id"]))
        else:
            tickets = d["recipients"] * d["messages"]
        waiting.append((max(due, now), 0, d["id"], f"#{d['id']} {d['kind']}", tickets))
    waiting.append((at or now, 1, 0, "this campaign", needed))
    waiting.sort()  # by time; at the same time, waiting ones first, oldest first
    mine = [w[3] for w in waiting].index("this campaign")
    rows = []
    left = balance
    for i, (due, _, _, name, tickets) in enumerate(waiting):
        spent = min(tickets, left)
        rows.append(
            {
                "send at": "now" if due <= now else clock.local_iso(due, tz),
                "delivery": name,
                "vs this campaign": "" if i == mine else ("before" if i < mine else "after"),
                "tickets needed": tickets,
                "balance before": left,
                "short": tickets - spent,
                "balance after": left - spent,
            }
        )
        left -= spent
    return pd.DataFrame(rows).set_index("delivery")


def forecast_chart(frame: pd.DataFrame, balance: int) -> Figure:
    """Bars: tickets each waiting delivery needs (red: the part the balance will not cover
    when its turn comes); steps: the balance left after each."""
    names = list(frame.index)
    labels = [
        f"{d}\n{s[:16].replace('T', ' ')}" for d, s in zip(names, frame["send at"], strict=True)
    ]
    funded = frame["tickets needed"] - frame["short"]
    colors = [BLUE if d == "this campaign" else GREY for d in names]
    fig, ax = _figure(max(6.0, 1.3 * len(frame) + 2), 3.8)
    x = range(len(frame))
    ax.bar(x, funded, color=colors)
    ax.bar(x, frame["short"], bottom=funded, color=RED)
    (line,) = ax.step([-0.5, *x], [balance, *frame["balance after"]], where="post", color="k")
    handles = [
        Patch(color=BLUE, label="this campaign, covered"),
        Patch(color=GREY, label="other deliveries, covered"),
        Patch(color=RED, label="not covered: errors (R10)"),
        line,
    ]
    line.set_label("balance left after each")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("tickets")
    ax.set_title(f"Waiting deliveries in send order (balance now {balance:,})", loc="left")
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# --- the delivery report notebook (R14, R15) ------------------------------------------


@dataclass
class DeliveryReport:
    """One delivery's history: every (number, message) with its status (R14) and the
    failed pairs a resend would send (R15). ``summary`` is None when there is nothing."""

    ctx: Context
    summary: dict[str, Any] | None
    items: pd.DataFrame
    failed_pairs: pd.DataFrame
    resends: list[dict[str, Any]]
    timezone: str

    @classmethod
    def load(cls, ctx: Context, delivery_id: int | None = None) -> DeliveryReport:
        """The report of ``delivery_id``, or of the latest delivery when None."""
        tz = accounts.get_account(ctx).timezone
        if delivery_id is None:
            latest = dl.list_deliveries(ctx, limit=1)
            if not latest:
                return cls(ctx, None, pd.DataFrame(), pd.DataFrame(), [], tz)
            delivery_id = int(latest[0]["id"])
        summary = dl.delivery_summary(ctx, delivery_id)
        resends = [d for d in dl.list_deliveries(ctx) if d["resend_of"] == delivery_id]
        return cls(
            ctx,
            summary,
            dl.delivery_items(ctx, delivery_id),
            dl.failed_pairs(ctx, delivery_id),
            resends[::-1],
            tz,
        )

    def headline(self) -> Note:
        s = self.summary
        if s is None:
            return Note(
                "**No deliveries yet.** Create one with the campaign notebook or "
                "`smsops bulk create … --yes`, then run this report again."
            )
        repairs = f", a resend of delivery {s['resend_of']}" if s["resend_of"] else ""
        return Note(
            f"**Delivery {s['id']}** ({s['kind']}{repairs}) is **{s['status']}**: "
            f"{s['recipients']:,} recipients × {s['messages']} message(s); {s['sent']:,} sent, "
            f"{s['errors']:,} errors, {s['tickets_used']:,} tickets used."
        )

    def overview(self) -> pd.DataFrame | Note:
        s = self.summary
        if s is None:
            return Note("_Nothing to show._")
        texts = {f"message {i}": t for i, t in enumerate(s["texts"], start=1)}
        keys = ["kind", "status", "created_at", "scheduled_at", "finished_at", "recipients"]
        keys += ["sent", "errors", "tickets_used", "resend_of"]
        rows = {k.replace("_", " "): s[k] for k in keys}
        rows["resent in"] = ", ".join(f"#{d['id']} ({d['status']})" for d in self.resends)
        return _key_values({"delivery": s["id"], **rows, **texts})

    def status_chart(self) -> Figure | Note:
        """Per message number, how many (number, message) pairs ended in each status."""
        if self.summary is None or self.items.empty:
            return Note("_No messages in this delivery._")
        table = pd.crosstab(self.items["message_no"], self.items["status"])
        order = [s for s in STATUS_COLORS if s in table.columns]
        fig, ax = _figure(7, 0.7 * len(table) + 1.6)
        left = pd.Series(0, index=table.index)
        labels = [f"message {m}" for m in table.index]
        for status in order:
            counts = table[status]
            ax.barh(
                labels,
                counts,
                left=left,
                color=STATUS_COLORS[status],
                label=f"{status} ({int(counts.sum()):,})",
            )
            left = left + counts
        ax.invert_yaxis()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("recipients")
        ax.set_title("Status of every (number, message) pair", loc="left")
        ax.legend(
            fontsize=8, frameon=False, ncols=len(order), loc="upper left", bbox_to_anchor=(0, -0.25)
        )
        ax.spines[["top", "right"]].set_visible(False)
        return fig

    def error_chart(self) -> Figure | Note:
        """Errors by reason; orange ones would be resent, grey ones never are (R16)."""
        if self.summary is None:
            return Note("_No delivery._")
        errors = self.items.loc[self.items["status"] == "error", "error"].value_counts()
        if errors.empty:
            return Note("**No errors**: every message that was sent was accepted.")
        resendable = set(self.failed_pairs["error"])
        fig, ax = _figure(7, 0.45 * len(errors) + 1.4)
        colors = [ORANGE if e in resendable else GREY for e in errors.index]
        _barh(ax, [str(e) for e in errors.index], [int(v) for v in errors], colors)
        ax.set_xlabel("(number, message) pairs")
        ax.set_title("Errors by reason (orange: a resend retries them; grey: never)", loc="left")
        return fig

    def _masked(self, frame: pd.DataFrame, columns: list[str], rows: int) -> pd.DataFrame:
        shown = frame.head(rows)
        out = pd.DataFrame(index=pd.Index(shown["seq"].to_numpy(), name="seq"))
        for c in columns:
            values = shown[c]
            if c == "phone":
                values = mask_phones(values)
            elif c in ("sent_at", "dlr_at"):
                # the store gives naive UTC and, from raw-SQL updates, aware values
                stamps = pd.to_datetime(values, utc=True).dt.tz_convert(self.timezone)
                values = stamps.dt.strftime("%Y-%m-%d %H:%M:%S").fillna("")
            out[_LABELS.get(c, c.replace("_", " "))] = values.to_numpy()
        return out.fillna("")

    def detail_note(self, rows: int = ROWS) -> Note:
        if self.summary is None:
            return Note("_Nothing to show._")
        if len(self.items) <= rows:
            return Note(f"All {len(self.items):,} (number, message) pairs in send order.")
        return Note(
            f"The first {rows:,} of {len(self.items):,} (number, message) pairs in send "
            f"order; all of them: `smsops deliveries show {self.summary['id']} --json`."
        )

    def detail(self, rows: int = ROWS) -> pd.DataFrame | None:
        """Every number and message with its status and error (R14), numbers masked."""
        if self.summary is None:
            return None
        cols = ["user_id", "phone", "message_no", "status", "error", "sent_at"]
        cols += [c for c in ("dlr_status", "dlr_at") if c in self.items.columns]
        return self._masked(self.items, cols, rows)

    def failed_note(self, rows: int = ROWS) -> Note:
        if self.summary is None:
            return Note("_Nothing to show._")
        errors = int((self.items["status"] == "error").sum())
        if self.failed_pairs.empty:
            return Note(
                f"**Nothing to resend**: {errors:,} errors, none of which a resend retries."
                if errors
                else "**Nothing to resend**: no message failed."
            )
        kept = len(self.failed_pairs)
        note = f"**{kept:,} failed pairs** to {self.failed_pairs['seq'].nunique():,} numbers"
        if kept < errors:
            note += f" ({errors - kept:,} more errors are never resent: opted-out numbers)"
        if kept > rows:
            note += (
                f"; the first {rows:,} are shown (all of them: "
                f"`smsops deliveries errors {self.summary['id']} --csv`)"
            )
        return Note(note + ".")

    def failed(self, rows: int = ROWS) -> pd.DataFrame | None:
        """The (number, message) pairs a bulk resend would send (R15), numbers masked."""
        if self.summary is None or self.failed_pairs.empty:
            return None
        return self._masked(self.failed_pairs, ["user_id", "phone", "message_no", "error"], rows)

    def resend(self, confirm: bool) -> Note | pd.DataFrame:
        """With ``confirm``: a new delivery of exactly the failed pairs, linked to this one
        and sent now (R15; R9 checks the tickets again). Pairs an earlier resend already
        repaired are not among them, so a re-run never sends twice."""
        s = self.summary
        if s is None or self.failed_pairs.empty:
            return Note("_Nothing to resend._")
        needed, balance = len(self.failed_pairs), accounts.balance(self.ctx)
        if not confirm:
            buy = f", {needed - balance:,} short: add tickets first" if needed > balance else ""
            return Note(
                f"Not resent. A resend needs {needed:,} tickets (balance {balance:,}{buy}); "
                "run this notebook with `resend=True` to send exactly the pairs above again."
            )
        created = dl.resend_bulk(self.ctx, int(s["id"]))
        sent = dispatch(self.ctx, created.delivery_id)
        return _key_values(
            {
                "resend delivery": created.delivery_id,
                "resend of": s["id"],
                "pairs": created.tickets_needed,
                "status": sent.status,
                "sent": sent.sent,
                "errors": sent.errors,
                "tickets used": sent.tickets_used,
            }
        )


# --- running the report notebook -------------------------------------------------------

# The lab template without its CDN scripts (require.js, MathJax, mermaid): the file must
# open offline, with its figures inline as data: URIs, and a readable width for mail.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block extra_css %}<style>
main { max-width: 1100px; margin: 0 auto; padding: 1em 2em; }
.jp-RenderedHTMLCommon table { font-size: 13px; }
.jp-OutputArea-output img { max-width: 100%; }
</style>{% endblock extra_css %}
"""


def execute(
    notebook: str | Path,
    output: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    cwd: str | Path | None = None,
    timeout: float = 600,
) -> Any:
    """Run a notebook with papermill on the ``python3`` kernel, which jupyter_client starts
    with this very interpreter (so the kernel sees this smsops). Returns the executed
    notebook; a failing cell becomes a :class:`ReportError` naming the error."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    try:
        return pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters or {},
            kernel_name=KERNEL,
            progress_bar=False,
            cwd=str(cwd or Path.cwd()),
            execution_timeout=timeout,
        )
    except pm.PapermillExecutionError as exc:
        raise ReportError(
            f"{Path(notebook).name} stopped in cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
        ) from None
    except (CellTimeoutError, DeadKernelError) as exc:
        raise ReportError(f"{Path(notebook).name} did not finish: {exc}") from None


def export_html(notebook: Any, title: str) -> str:
    """A standalone HTML page of an executed notebook: outputs only, images inline."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    notebook.metadata["title"] = title
    exporter = HTMLExporter(
        extra_loaders=[DictLoader({"smsops_report.html.j2": _TEMPLATE})],
        template_file="smsops_report.html.j2",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(notebook)
    return str(body)


def run_report(
    delivery_id: int | None,
    html_path: str | Path,
    *,
    database_url: str | None = None,
    resend: bool = False,
    notebook_path: str | Path | None = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """Execute ``notebooks/delivery_report.ipynb`` for ``delivery_id`` (None: the latest)
    and write it as one self-contained HTML file that can be mailed.

    The kernel inherits this process's ``SMSOPS_*`` environment and working directory; pass
    ``database_url`` only to override it (it is then written into the executed notebook).
    ``notebook_path`` keeps the executed notebook too."""
    source = NOTEBOOKS / "delivery_report.ipynb"
    if not source.exists():
        raise ReportError(f"the report notebook is missing: {source}")
    settings = Settings() if database_url is None else Settings(database_url=database_url)
    ctx = Context.open(settings)
    try:
        if delivery_id is None:
            latest = dl.list_deliveries(ctx, limit=1)
            if not latest:
                raise NotFoundError("no deliveries yet; nothing to report")
            delivery_id = int(latest[0]["id"])
        dl.delivery_summary(ctx, delivery_id)  # an unknown id fails here, before papermill
    finally:
        ctx.close()
    parameters: dict[str, Any] = {"delivery_id": delivery_id, "resend": resend}
    if database_url is not None:
        parameters["database_url"] = database_url
    with tempfile.TemporaryDirectory(prefix="smsops-report-") as tmp:
        executed = execute(
            source, notebook_path or Path(tmp) / "report.ipynb", parameters, timeout=timeout
        )
    html = export_html(executed, f"smsops delivery {delivery_id}")
    target = Path(html_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    return {
        "delivery_id": delivery_id,
        "html": str(target.resolve()),
        "bytes": len(html.encode("utf-8")),
        "images": html.count('src="data:image/png;base64,'),
    }
