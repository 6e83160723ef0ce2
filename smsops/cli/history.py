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
    deliveries_app,
    emit,
    kv_table,
    out,
    write_csv_stdout,
)

# The services are imported by the commands that use them: `--help` and the light commands
# load only what they need (#12, tests/test_fast_start.py).

# --- history --------------------------------------------------------------------------


@deliveries_app.command("list")
@command
def deliveries_list(
    limit: Annotated[int | None, typer.Option(help="Only the newest N.")] = None,
    as_json: JsonOpt = False,
) -> None:
    from smsops.services import deliveries as dl

    with context(as_json) as ctx:
        rows = dl.list_deliveries(ctx, limit)

    def human() -> None:
        table = Table(
            "id",
            "kind",
            "status",
            "created",
            "scheduled",
            "recipients",
            "sent",
            "errors",
            "tickets",
            "resend of",
        )
        for r in rows:
            table.add_row(
                *(
                    cell(r[k])
                    for k in (
                        "id",
                        "kind",
                        "status",
                        "created_at",
                        "scheduled_at",
                        "recipients",
                        "sent",
                        "errors",
                        "tickets_used",
                        "resend_of",
                    )
                )
            )
        out.print(table)

    emit(as_json, {"deliveries": rows}, human)


@deliveries_app.command("show")
@command
def deliveries_show(
    delivery_id: DeliveryId,
    limit: Annotated[int, typer.Option(help="Rows shown on the terminal.")] = 50,
    as_json: JsonOpt = False,
) -> None:
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
                {"delivery": summary, "items": records.to_dict("records")},
                ensure_ascii=False,
                default=str,
            )
        )
        return
    out.print(kv_table({k: v for k, v in summary.items() if v is not None}))
    table = Table("seq", "phone", "message", "status", "error", "delivery report")
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
        out.print(f"… {len(frame) - limit:,} more (use --json or `deliveries errors`)")


@deliveries_app.command("errors")
@command
def deliveries_errors(
    delivery_id: int,
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
    """The (number, message) pairs that failed, with the reason."""
    from smsops.domain.phones import mask_phones
    from smsops.services import deliveries as dl

    with context(as_json) as ctx:
        frame = dl.delivery_items(ctx, delivery_id, failed_only=True)
    frame = frame[["seq", "user_id", "phone", "message_no", "error"]]
    if as_csv:  # for Excel: a BOM, and numbers as 090-1234-5678 (see write_csv_stdout)
        write_csv_stdout(frame, phones=["phone"])
        return

    def human() -> None:
        table = Table("seq", "user", "phone", "message", "error")
        for row, masked in zip(frame.itertuples(), mask_phones(frame["phone"]), strict=True):
            table.add_row(
                str(row.seq), cell(row.user_id), masked, str(row.message_no), cell(row.error)
            )
        out.print(table)
        out.print(f"{len(frame):,} failed")

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
def deliveries_cancel(delivery_id: int, as_json: JsonOpt = False) -> None:
    from smsops.services import deliveries as dl

    with context(as_json) as ctx:
        result = dl.cancel(ctx, delivery_id)
    emit(as_json, result, lambda: out.print(f"delivery {delivery_id} cancelled"))
