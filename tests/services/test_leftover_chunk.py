"""R11 in one long-lived process (a notebook kernel, a Prefect worker): a dispatch that
died mid-chunk with an exception leaves its claimed range on the process's dispatcher
row; the next dispatch from the same process settles that range by its hand-off marks
before it registers again — it never hands a message of it to the gateway twice."""

from __future__ import annotations

import pytest
from support import add_users, mobile

from smsops.gateways.outbox import OutboxGateway
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import dispatch

HANDED: list[str] = []  # every key any gateway of the test put on the wire


class Interrupted(RuntimeError):
    pass


class NoRecord(OutboxGateway):
    """The real outbox, but one that cannot say which keys it took (as Kannel cannot):
    a resume must go by the marks. The first one is interrupted after two groups."""

    record = None
    interrupt = True

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx.settings.outbox, rate_limit=40)  # groups of 2

    def accepted_keys(self, delivery_id: int) -> set[str] | None:
        return None

    def _append(self, batch):  # type: ignore[no-untyped-def]
        HANDED.extend(str(k) for k in batch["idempotency_key"])
        super()._append(batch)
        if NoRecord.interrupt and len(HANDED) >= 4:
            NoRecord.interrupt = False
            raise Interrupted("the kernel was interrupted mid-chunk")


def test_r11_a_chunk_left_by_an_interrupted_dispatch_is_settled_by_the_next_one(settings):
    HANDED.clear()
    NoRecord.interrupt = True
    ctx = Context.open(settings, gateway_factory=lambda s: NoRecord(ctx))
    add_users(ctx, [mobile(i) for i in range(1, 11)])
    accounts.add_tickets(ctx, 20)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["一通目", "二通目"]))

    with pytest.raises(Interrupted):
        dispatch(ctx, created.delivery_id)
    assert len(HANDED) == 4  # two groups went out, then the process was interrupted

    result = dispatch(ctx, created.delivery_id)  # the same process, again

    twice = sorted({k for k in HANDED if HANDED.count(k) > 1})
    assert not twice, f"handed to the gateway twice: {twice}"
    items = dl.delivery_items(ctx, created.delivery_id)
    unknown = items[items["error"] == "outcome_unknown"]
    assert len(unknown) <= 2  # at most the last group announced before the interruption
    assert result.sent + len(unknown) == 20
    ctx.close()
