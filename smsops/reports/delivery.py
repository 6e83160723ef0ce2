"""The delivery report notebook: history detail, breakdowns and resend (R14, R15)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from smsops.domain.phones import mask_phones
from smsops.domain.vocabulary import DlrStatus, ItemError, ItemStatus, ReplyAction
from smsops.i18n import N_, _, language, local_time, number
from smsops.refusals import localize
from smsops.reports.common import (
    _LABELS,
    GREY,
    ORANGE,
    ROWS,
    STATUS_COLORS,
    Note,
    _barh,
    _figure,
    _key_values,
    chart_text,
    charts_in_language,
    font_note,
)
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import inbound
from smsops.services.context import Context
from smsops.services.dispatch import send_if_due

# What an error reason means, beside the reason itself (which stays as it is: programs and
# `deliveries errors --csv` read it).
ERROR_MEANINGS: dict[str, str] = {
    ItemError.INSUFFICIENT_TICKETS: N_("tickets ran out (R10)"),
    ItemError.OPTED_OUT: N_("opted out (R16)"),
    ItemError.OUTCOME_UNKNOWN: N_("may have gone out"),
    "rejected_by_carrier": N_("refused by the carrier"),
    DlrStatus.UNDELIVERABLE: N_("not delivered"),
    DlrStatus.SMSC_REJECTED: N_("refused by the SMSC"),
}


@dataclass
class DeliveryReport:
    """One delivery's history: every (number, message) with its status (R14) and the
    failed pairs a resend would send (R15). ``summary`` is None when there is nothing."""

    ctx: Context
    summary: dl.DeliverySummary | None
    items: pd.DataFrame
    failed_pairs: pd.DataFrame
    resends: list[dl.DeliverySummary]
    timezone: str

    @classmethod
    def load(cls, ctx: Context, delivery_id: int | None = None) -> DeliveryReport:
        """The report of ``delivery_id``, or of the latest delivery when None."""
        tz = accounts.get_account(ctx).timezone
        if delivery_id is None:
            latest = dl.list_deliveries(ctx, limit=1)
            if not latest:
                return cls(ctx, None, pd.DataFrame(), pd.DataFrame(), [], tz)
            delivery_id = latest[0].id
        summary = dl.delivery_summary(ctx, delivery_id)
        resends = [d for d in dl.list_deliveries(ctx) if d.resend_of == delivery_id]
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
        missing_font = font_note()  # said once, here at the top (#15)
        if s is None:
            note = _(
                "**No deliveries yet.** Create one with the campaign notebook or "
                "`smsops bulk create … --yes`, then run this report again."
            )
        else:
            repairs = _(", a resend of delivery {id}").format(id=s.resend_of) if s.resend_of else ""
            note = _(
                "**Delivery {id}** ({kind}{repairs}) is **{status}**: {recipients} recipients × "
                "{messages} message(s); {sent} sent, {errors} errors, {used} tickets used."
            ).format(
                id=s.id,
                kind=s.kind,
                repairs=repairs,
                status=s.status,
                recipients=number(s.recipients),
                messages=s.messages,
                sent=number(s.sent),
                errors=number(s.errors),
                used=number(s.tickets_used),
            )
            if s.paused_reason:  # why it waits, and until when (#11)
                note += " " + _("**Paused:** {reason}; `smsops dispatch-due` resumes it.").format(
                    reason=localize(s.paused_reason)
                )
        return Note(note if missing_font is None else f"{note}\n\n{missing_font}")

    def overview(self) -> pd.DataFrame | Note:
        s = self.summary
        if s is None:
            return Note(_("_Nothing to show._"))
        rows = s.human()  # as `deliveries show` and the Prefect summary say it (#14)
        if self.resends:
            rows[_("resent in")] = ", ".join(f"#{d.id} ({d.status})" for d in self.resends)
        return _key_values(rows)

    def status_chart(self) -> Figure | Note:
        """Per message number, how many (number, message) pairs ended in each status."""
        if self.summary is None or self.items.empty:
            return Note(_("_No messages in this delivery._"))
        table = pd.crosstab(self.items["message_no"], self.items["status"])
        order = [s for s in STATUS_COLORS if s in table.columns]
        fig, ax = _figure(7, 0.7 * len(table) + 1.6)
        left = pd.Series(0, index=table.index)
        labels = [chart_text("message {number}").format(number=m) for m in table.index]
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
        ax.set_xlabel(chart_text("recipients"))
        ax.set_title(chart_text("Status of every (number, message) pair"), loc="left")
        ax.legend(
            fontsize=8, frameon=False, ncols=len(order), loc="upper left", bbox_to_anchor=(0, -0.25)
        )
        ax.spines[["top", "right"]].set_visible(False)
        return fig

    def error_chart(self) -> Figure | Note:
        """Errors by reason; orange ones would be resent, grey ones never are (R16)."""
        if self.summary is None:
            return Note(_("_No delivery._"))
        errors = self.items.loc[self.items["status"] == ItemStatus.ERROR, "error"].value_counts()
        if errors.empty:
            return Note(_("**No errors**: every message that was sent was accepted."))
        fig, ax = _figure(7, 0.45 * len(errors) + 1.4)
        colors = [GREY if e in dl.NOT_RESENT else ORANGE for e in errors.index]
        # the reason as recorded, and in Japanese what it means (English reads the reason)
        meaning = language() == "ja" and charts_in_language()
        labels = [
            f"{e} ({_(ERROR_MEANINGS[e])})" if meaning and e in ERROR_MEANINGS else str(e)
            for e in errors.index
        ]
        _barh(ax, labels, [int(v) for v in errors], colors)
        ax.set_xlabel(chart_text("(number, message) pairs"))
        ax.set_title(
            chart_text("Errors by reason (orange: a resend retries them; grey: never)"), loc="left"
        )
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
            out[_(_LABELS[c]) if c in _LABELS else c.replace("_", " ")] = values.to_numpy()
        return out.fillna("")

    def detail_note(self, rows: int = ROWS) -> Note:
        if self.summary is None:
            return Note(_("_Nothing to show._"))
        if len(self.items) <= rows:
            return Note(
                _("All {n} (number, message) pairs in send order.").format(
                    n=number(len(self.items))
                )
            )
        return Note(
            _(
                "The first {rows} of {n} (number, message) pairs in send order; all of them: "
                "`smsops deliveries show {id} --json`."
            ).format(rows=number(rows), n=number(len(self.items)), id=self.summary.id)
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
            return Note(_("_Nothing to show._"))
        error = self.items.loc[self.items["status"] == ItemStatus.ERROR, "error"]
        never = int(error.isin(dl.NOT_RESENT).sum())  # opted out, or may have gone out
        repaired = len(error) - never - len(self.failed_pairs)  # by resends, or opted out since
        if self.failed_pairs.empty:
            if repaired:
                by = (
                    _("resent in {ids}").format(ids=", ".join(f"#{d.id}" for d in self.resends))
                    if self.resends
                    else _("their numbers opted out since")
                )
                return Note(
                    _(
                        "**Nothing left to resend**: {n} failed pairs were taken care of ({by})"
                    ).format(n=number(repaired), by=by)
                    + (
                        _("; {n} more are never resent (R16, outcome unknown).").format(
                            n=number(never)
                        )
                        if never
                        else _(".")
                    )
                )
            return Note(
                _("**Nothing to resend**: {n} errors, none of which a resend retries.").format(
                    n=number(never)
                )
                if never
                else _("**Nothing to resend**: no message failed.")
            )
        kept = len(self.failed_pairs)
        note = _("**{n} failed pairs** to {numbers} numbers").format(
            n=number(kept), numbers=number(self.failed_pairs["seq"].nunique())
        )
        if never:
            note += _(
                " ({n} more errors are never resent: opted-out numbers, outcome unknown)"
            ).format(n=number(never))
        if repaired:
            note += _(" ({n} already repaired by a resend)").format(n=number(repaired))
        if kept > rows:
            note += _(
                "; the first {rows} are shown (all of them: `smsops deliveries errors {id} --csv`)"
            ).format(rows=number(rows), id=self.summary.id)
        return Note(note + _("."))

    def failed(self, rows: int = ROWS) -> pd.DataFrame | None:
        """The (number, message) pairs a bulk resend would send (R15), numbers masked."""
        if self.summary is None or self.failed_pairs.empty:
            return None
        return self._masked(self.failed_pairs, ["user_id", "phone", "message_no", "error"], rows)

    def _replies_since(self) -> tuple[pd.DataFrame, str]:
        """The replies received since this delivery started (sent now: created; else its
        scheduled time), senders and texts masked; all of them when there is no delivery."""
        frame = inbound.replies_frame(self.ctx)
        s = self.summary
        start = None if s is None else (s.scheduled_at or s.created_at)
        since = "" if start is None else _(" since {at}").format(at=local_time(start))
        if start is None or frame.empty:
            return frame, since
        received = pd.to_datetime(frame["received_at"], utc=True)
        return frame[received >= pd.Timestamp(start)], since

    def replies_note(self) -> Note:
        """How many replies came in since the delivery started, by what smsops did with
        them (R16): opted out, to review, ignored."""
        frame, since = self._replies_since()
        if frame.empty:
            return Note(_("**No replies**{since}.").format(since=since))
        counts = frame["action"].value_counts()
        review = int(counts.get(ReplyAction.REVIEW, 0))
        by = ", ".join(f"{number(int(counts.get(a, 0)))} {a}" for a in ReplyAction)
        note = _("**{n} replies**{since}: {by}.").format(n=number(len(frame)), since=since, by=by)
        if review:
            shown = (
                _("the first {rows} are").format(rows=number(ROWS))
                if review > ROWS
                else _("they are")
            )
            note += _(
                " {n} may be a refusal and need a person to read them; {shown} below (all of "
                "them: `smsops replies list --action review`)."
            ).format(n=number(review), shown=shown)
        return Note(note)

    def replies(self, rows: int = ROWS) -> pd.DataFrame | None:
        """The replies to review (a refusal or not? R16), newest first, senders masked."""
        frame, _since = self._replies_since()
        review = frame[frame["action"] == ReplyAction.REVIEW].head(rows)
        if review.empty:
            return None
        out = review.set_index("id")[["received_at", "sender", "text", "reason"]]
        stamps = pd.to_datetime(out["received_at"], utc=True).dt.tz_convert(self.timezone)
        out["received_at"] = stamps.dt.strftime("%Y-%m-%d %H:%M:%S")
        out.index.name = "reply"
        return out.rename(columns={"received_at": "received", "reason": "why"})

    def resend(self, confirm: bool) -> Note | pd.DataFrame:
        """With ``confirm``: a new delivery of exactly the failed pairs, linked to this one
        and sent now (R15; R9 checks the tickets again). Pairs an earlier resend already
        repaired are not among them, so a re-run never sends twice."""
        s = self.summary
        if s is None or self.failed_pairs.empty:
            return Note(_("_Nothing to resend._"))
        needed, balance = len(self.failed_pairs), accounts.balance(self.ctx)
        if not confirm:
            buy = (
                _(", {n} short: add tickets first").format(n=number(needed - balance))
                if needed > balance
                else ""
            )
            return Note(
                _(
                    "Not resent. A resend needs {needed} tickets (balance {balance}{buy}); run "
                    "this notebook with `resend=True` to send exactly the pairs above again."
                ).format(needed=number(needed), balance=number(balance), buy=buy)
            )
        result = send_if_due(self.ctx, dl.resend_bulk(self.ctx, s.id))
        return _key_values(
            {
                "resend delivery": result.delivery_id,
                "resend of": s.id,
                "pairs": result.tickets_needed,
                "status": result.status,
                "sent": result.sent,
                "errors": result.errors,
                "tickets used": result.tickets_used,
            }
        )


# --- running the report notebook -------------------------------------------------------

# The lab template without its CDN scripts (require.js, MathJax, mermaid): the file must
# open offline, with its figures inline as data: URIs, and a readable width for mail.
