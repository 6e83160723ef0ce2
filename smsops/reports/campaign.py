"""The campaign notebook: the R13 confirmation and the ticket forecast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from smsops import clock, i18n
from smsops.domain.phones import mask_phones
from smsops.i18n import _
from smsops.refusals import localize
from smsops.reports.common import (
    BLUE,
    GREEN,
    GREY,
    ORANGE,
    REASON_LABELS,
    RED,
    Note,
    _barh,
    _figure,
    _key_values,
    chart_text,
    label,
)
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import send_if_due
from smsops.services.estimates import last_message, warning_lines


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
        by a ``query`` in the selection language (:mod:`smsops.domain.query`); refused
        like ``smsops bulk preview`` (R1, R6, R7, R12)."""
        files = [users_csv] if users_csv else []
        return cls(ctx, dl.preview_bulk(ctx, messages, at=at, users_files=files, query=query))

    @property
    def when(self) -> str:
        p = self.preview
        if p.scheduled_at is None:
            return _("now (immediately)")
        return i18n.when(p.scheduled_at, p.timezone)

    def headline(self) -> Note:
        p = self.preview
        n = i18n.number
        if p.users == 0:
            return Note(
                _(
                    "**No users to select from.** The user table is empty (a fresh database?). "
                    "Import one with `smsops users import data/sample_users.csv`, or run this "
                    "notebook with `users_csv='data/sample_users.csv'`. Nothing below can be "
                    "sent."
                )
            )
        if p.recipients == 0:
            return Note(
                _("**0 recipients — nothing can be sent (R4).** {diagnosis}.").format(
                    diagnosis=localize(p.diagnosis)
                )
            )
        tickets = (
            _("enough (balance {balance})").format(balance=i18n.tickets(p.balance))
            if not p.shortfall
            else _(
                "**short by {shortfall}** (balance {balance}): creating it would be refused "
                "(R9) until more tickets are added"
            ).format(shortfall=i18n.tickets(p.shortfall), balance=i18n.tickets(p.balance))
        )
        later = ""
        short = int(self.forecast().loc["this campaign", "short"])
        if short and not p.shortfall:
            later = _(
                " **Warning:** deliveries waiting to go out before it will leave it {short} "
                "short at its send time (R10: the last pairs become errors)."
            ).format(short=i18n.tickets(short))
        if p.completion is not None:  # the sending window, the next delivery (#11)
            later += "".join(
                " " + _("**Warning:** {warning}.").format(warning=text)
                for text in warning_lines(p.completion)
            )
        return Note(
            _(
                "**{recipients} recipients** will get {messages} message(s), sent {when}. "
                "Tickets needed {needed}: {tickets}.{later} Nothing is saved until this "
                "notebook runs with `confirm=True`."
            ).format(
                recipients=n(p.recipients),
                messages=len(p.messages),
                when=self.when,
                needed=i18n.tickets(p.tickets_needed),
                tickets=tickets,
                later=later,
            )
        )

    def confirmation(self) -> pd.DataFrame:
        """The R13 confirmation as one table: who, when, what, at what cost."""
        p = self.preview
        n = i18n.number
        return _key_values(
            {
                _("users considered"): n(p.users),
                _("recipients"): n(p.recipients),
                _("send at"): self.when,
                _("messages"): len(p.messages),
                _("tickets needed"): f"{i18n.tickets(p.tickets_needed)} "
                f"({n(p.recipients)} × {len(p.messages)})",
                _("ticket balance"): i18n.tickets(p.balance),
                _("shortfall"): i18n.tickets(p.shortfall),
                _("selection"): localize(p.diagnosis),
                **self._completion(),
            }
        )

    def _completion(self) -> dict[str, str]:
        """When the last message leaves (#11), and the warnings."""
        c, tz = self.preview.completion, self.preview.timezone
        if c is None:
            return {}
        warned = {_("warnings"): "; ".join(warning_lines(c))} if c.warnings else {}
        return {_("last message leaves"): last_message(c, tz), **warned}

    def exclusions(self) -> pd.DataFrame | None:
        """Users left out, per reason (R2–R5, R16)."""
        counts = self.preview.excluded
        if not counts:
            return None
        return pd.DataFrame(
            {
                "users": list(counts.values()),
                "meaning": [label(REASON_LABELS[r]) if r in REASON_LABELS else r for r in counts],
            },
            index=pd.Index(list(counts), name="reason"),
        )

    def exclusion_chart(self) -> Figure | Note:
        p = self.preview
        if p.users == 0:
            return Note(_("_No users, so no chart._"))
        labels = [
            chart_text("recipients"),
            *(chart_text(REASON_LABELS[r]) if r in REASON_LABELS else r for r in p.excluded),
        ]
        values = [p.recipients, *p.excluded.values()]
        fig, ax = _figure(7, 0.45 * len(labels) + 1.2)
        _barh(ax, labels, values, [GREEN] + [ORANGE] * len(p.excluded))
        ax.set_title(
            chart_text("{users} users → {recipients} recipients").format(
                users=i18n.number(p.users), recipients=i18n.number(p.recipients)
            ),
            loc="left",
        )
        ax.set_xlabel(chart_text("users"))
        return fig

    def sample(self, rows: int = 10) -> pd.DataFrame | Note:
        """The first recipients in send order, numbers masked."""
        r = self.preview.selection.recipients.head(rows)
        if r.empty:
            return Note(_("_No recipients._"))
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
                _("_No other delivery is waiting to be sent: nothing competes for these tickets._")
            )
        return forecast_chart(frame, self.preview.balance)

    def create(self, confirm: bool) -> Note | pd.DataFrame:
        """Save the delivery only when ``confirm`` is true (R13); an immediate one is then
        sent at once, a scheduled one waits for its time (R12)."""
        if not confirm:
            return Note(
                _("**Not confirmed: nothing was saved.** Run with `confirm=True` to create.")
            )
        return _key_values(send_if_due(self.ctx, dl.create_bulk(self.ctx, self.preview)).to_dict())


def ticket_forecast(ctx: Context, needed: int, at: datetime | None, balance: int) -> pd.DataFrame:
    """Deliveries waiting to be sent (queued, scheduled) with a new one of ``needed`` tickets
    at ``at`` (None = now), in send order, and the balance each leaves. Scheduled deliveries
    reserve nothing (R10): whoever is sent first spends first, and a delivery that finds
    too few tickets sends a prefix and records the rest as errors."""
    tz = accounts.get_account(ctx).timezone
    now = clock.now()
    waiting = [
        (max(d.due, now), 0, d.id, f"#{d.id} {d.kind}", int(d.tickets))
        for d in dl.waiting_demand(ctx).itertuples()
    ]
    waiting.append((at or now, 1, 0, "this campaign", needed))
    waiting.sort()  # by time; at the same time, waiting ones first, oldest first
    mine = [w[3] for w in waiting].index("this campaign")
    rows = []
    left = balance
    for i, (due, _waiting, _id, name, tickets) in enumerate(waiting):
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
        Patch(color=BLUE, label=chart_text("this campaign, covered")),
        Patch(color=GREY, label=chart_text("other deliveries, covered")),
        Patch(color=RED, label=chart_text("not covered: errors (R10)")),
        line,
    ]
    line.set_label(chart_text("balance left after each"))
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel(chart_text("tickets"))
    ax.set_title(
        chart_text("Waiting deliveries in send order (balance now {balance})").format(
            balance=i18n.number(balance)
        ),
        loc="left",
    )
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    ax.spines[["top", "right"]].set_visible(False)
    return fig
