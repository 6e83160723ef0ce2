"""Delivery history: list, detail, failures (safe CSV) and cancel (R12, R14)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from smsops.cli.common import (
    DeliveryId,
    JsonOpt,
    cell,
    command,
    context,
    emit,
    kv_table,
    out,
    write_csv_stdout,
)
from smsops.i18n import _, number

# The services are imported by the commands that use them: `--help` and the light commands
# load only what they need (#12, tests/test_fast_start.py).

deliveries_app = typer.Typer(
    help="Delivery history (R14): list, detail, failures and cancel.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add ``deliveries`` to the root ``app``."""
    app.add_typer(deliveries_app, name="deliveries")


# --- history --------------------------------------------------------------------------


@deliveries_app.command("list")
@command
def deliveries_list(
    limit: Annotated[int | None, typer.Option(min=0, help="Only the newest N.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List deliveries, newest first (R14).

    Kind, status, when, recipients, sent, errors, tickets used and the delivery it
    resends."""
    from smsops.services import deliveries as dl

    with context(as_json) as ctx:
        found = dl.list_deliveries(ctx, limit)

    def human() -> None:
        columns = dl.DeliverySummary.columns()
        table = Table(*columns)
        for delivery in found:
            shown = delivery.human()
            table.add_row(*(shown.get(column, "") for column in columns))
        out.print(table)

    emit(as_json, {"deliveries": [d.to_dict() for d in found]}, human)


@deliveries_app.command("show")
@command
def deliveries_show(
    delivery_id: DeliveryId,
    limit: Annotated[
        int, typer.Option(min=0, help="Rows shown on the terminal (--json has every one).")
    ] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Show one delivery and each (number, message) pair with its status (R14).

    Each pair's error and delivery report too; numbers are masked on the terminal."""
    from smsops.domain.phones import mask_phones
    from smsops.services import account as accounts
    from smsops.services import deliveries as dl

    with context(as_json) as ctx:
        summary = dl.delivery_summary(ctx, delivery_id)
        frame = dl.delivery_items(ctx, delivery_id)
        tz = accounts.get_account(ctx).timezone
    if as_json:
        keys = ["seq", "phone", "message_no", "status", "error"]
        keys += ["dlr_status", "dlr_at", "dlr_reason"]  # the delivery report, if any
        shown = frame.assign(dlr_at=dl.iso_times(frame["dlr_at"], tz))[keys]
        records = shown.astype(object).where(shown.notna(), None)
        print(
            json.dumps(
                {"delivery": summary.to_dict(), "items": records.to_dict("records")},
                ensure_ascii=False,
                default=str,
            )
        )
        return
    out.print(kv_table(summary.human()))
    table = Table(_("seq"), _("phone"), _("message"), _("status"), _("error"), _("delivery report"))
    shown = frame.head(limit)
    for row, masked in zip(shown.itertuples(), mask_phones(shown["phone"]), strict=True):
        table.add_row(
            str(row.seq),
            masked,
            str(row.message_no),
            row.status,
            cell(row.error),
            cell(row.dlr_status),
        )
    out.print(table)
    if len(frame) > limit:
        out.print(
            _("… {n} more (use --json or `deliveries errors`)").format(n=number(len(frame) - limit))
        )


@deliveries_app.command("errors")
@command
def deliveries_errors(
    delivery_id: DeliveryId,
    as_csv: Annotated[
        bool,
        typer.Option(
            "--csv",
            help="CSV on stdout for Excel: UTF-8 with BOM, numbers as 090-1234-5678, "
            "no cell read as a formula.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The (number, message) pairs that failed, with the reason.

    What `resend` sends again (R15). Example: smsops deliveries errors 12 --csv > failed.csv"""
    from smsops.domain.phones import mask_phones
    from smsops.services import deliveries as dl

    with context(as_json) as ctx:
        frame = dl.delivery_items(ctx, delivery_id, failed_only=True)
    frame = frame[["seq", "user_id", "phone", "message_no", "error"]]
    if as_csv:  # for Excel: a BOM, and numbers as 090-1234-5678 (see write_csv_stdout)
        write_csv_stdout(frame, phones=["phone"])
        return

    def human() -> None:
        table = Table(_("seq"), _("user"), _("phone"), _("message"), _("error"))
        for row, masked in zip(frame.itertuples(), mask_phones(frame["phone"]), strict=True):
            table.add_row(
                str(row.seq), cell(row.user_id), masked, str(row.message_no), cell(row.error)
            )
        out.print(table)
        out.print(_("{n} failed").format(n=number(len(frame))))

    emit(
        as_json,
        {
            "delivery_id": delivery_id,
            "errors": frame.astype(object).where(frame.notna(), None).to_dict("records"),
        },
        human,
    )


@deliveries_app.command("cancel")
@command
def deliveries_cancel(delivery_id: DeliveryId, as_json: JsonOpt = False) -> None:
    """Cancel a delivery that has not started sending (R12).

    A scheduled or queued one: none of its messages go out. One already sending or
    finished is refused."""
    from smsops.services import deliveries as dl

    with context(as_json) as ctx:
        result = dl.cancel(ctx, delivery_id)
    emit(as_json, result.to_dict(), lambda: out.print(result.describe()))
