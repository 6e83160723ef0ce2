"""The typed results of the delivery services (#14): each one's ``to_dict()`` is the --json
document DESIGN.md names, key for key and in order, and ``describe()`` is the line the CLI
prints."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from support import add_users, mobile

from smsops import clock
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import send_if_due
from smsops.settings import Settings

LISTED = [
    "id",
    "kind",
    "status",
    "created_at",
    "scheduled_at",
    "finished_at",
    "recipients",
    "messages",
    "sent",
    "errors",
    "tickets_used",
    "resend_of",
]
CREATED = ["delivery_id", "status", "recipients", "messages", "tickets_needed", "scheduled_at"]


@pytest.fixture
def sctx(sqlite_settings: Settings) -> Iterator[Context]:
    context = Context.open(sqlite_settings)
    add_users(context, [mobile(1), mobile(2), mobile(3)])
    accounts.add_tickets(context, 100)
    yield context
    context.close()


def _create(ctx: Context, at: str | None = None) -> dl.Created:
    return dl.create_bulk(ctx, dl.preview_bulk(ctx, ["セール", "詳細はWebで"], at=at))


def test_r12_a_delivery_sent_now_gives_creation_and_send_in_one_document(sctx):
    saved = send_if_due(sctx, _create(sctx))
    assert list(saved.to_dict()) == [*CREATED, "sent", "errors", "tickets_used"]
    assert (saved.status, saved.sent, saved.errors, saved.tickets_used) == ("sent", 6, 0, 6)
    assert saved.describe() == (
        f"delivery {saved.delivery_id}: sent, 3 recipients × 2 messages; "
        "sent 6, errors 0, tickets used 6"
    )


def test_r12_a_scheduled_delivery_waits_and_says_when(sctx):
    at = (clock.now() + timedelta(days=2)).replace(microsecond=0).isoformat()
    created = _create(sctx, at)
    saved = send_if_due(sctx, created)
    assert saved.to_dict() == created.to_dict()  # nothing but the creation
    assert list(saved.to_dict()) == CREATED
    assert saved.sent is None and saved.status == "scheduled"
    assert ", scheduled for " in saved.describe() and "; sent" not in saved.describe()


def test_r14_history_rows_and_detail_keep_their_json_shape(sctx):
    sent = send_if_due(sctx, _create(sctx))
    listed = dl.list_deliveries(sctx)
    assert [list(d.to_dict()) for d in listed] == [LISTED]
    detail = dl.delivery_summary(sctx, sent.delivery_id)
    assert list(detail.to_dict()) == [*LISTED, "texts"]
    assert detail.to_dict()["texts"] == ["セール", "詳細はWebで"]
    assert {k: v for k, v in detail.to_dict().items() if k != "texts"} == listed[0].to_dict()


def test_r12_cancel_result_json_and_line(sctx):
    at = (clock.now() + timedelta(days=2)).isoformat()
    created = _create(sctx, at)
    cancelled = dl.cancel(sctx, created.delivery_id)
    assert cancelled.to_dict() == {"delivery_id": created.delivery_id, "status": "cancelled"}
    assert cancelled.describe() == f"delivery {created.delivery_id} cancelled"
    assert dl.delivery_summary(sctx, created.delivery_id).status == "cancelled"
