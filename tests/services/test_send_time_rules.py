"""Rules a running send keeps checking (issue 17): an opt-out that arrives while a
delivery is half sent applies to its remaining chunks (R16)."""

from __future__ import annotations

from support import add_users, e164, mobile, outbox

from smsops.gateways.outbox import OutboxGateway
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import people
from smsops.services.context import Context
from smsops.services.dispatch import dispatch


class ReplyAfterFirstChunk(OutboxGateway):
    """The real outbox; after its first chunk the user with number 20 replies 停止 (the
    reply lands through the same service the receiver uses)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx.settings.outbox)
        self.ctx, self.chunks = ctx, 0

    def send(self, batch, hand_off=None):  # type: ignore[no-untyped-def]
        result = super().send(batch, hand_off)
        self.chunks += 1
        if self.chunks == 1:
            people.optout_add(self.ctx, mobile(20), source="reply")
        return result


def test_r16_a_number_opted_out_while_its_delivery_is_half_sent_gets_nothing_after(settings):
    ctx = Context.open(settings)  # chunks of 7 pairs: number 20's pairs are chunks later
    ctx.gateway_factory = lambda s: ReplyAfterFirstChunk(ctx)
    add_users(ctx, [mobile(i) for i in range(1, 31)])
    accounts.add_tickets(ctx, 60)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["一通目", "二通目"]))
    result = dispatch(ctx, created.delivery_id)
    sent_to = [line["phone"] for line in outbox(ctx)]
    assert e164(20) not in sent_to and len(sent_to) == 58
    items = dl.delivery_items(ctx, created.delivery_id)
    assert items.loc[items["seq"] == 20, "error"].tolist() == ["opted_out", "opted_out"]
    assert (result.sent, result.errors) == (58, 2)
    assert accounts.balance(ctx) == 2  # the two pairs not sent gave their tickets back
    ctx.close()


def test_r11_after_a_crash_only_items_between_the_answered_and_handed_marks_are_in_doubt():
    import pandas as pd

    from smsops.services.dispatch import _fates

    class Mark:  # the dead dispatcher's row: answered up to (1, 2), handed up to (3, 1)
        answered_seq, answered_message_no, handed_seq, handed_message_no = 1, 2, 3, 1

    class Nothing:  # took a chunk, handed nothing over yet
        answered_seq = answered_message_no = handed_seq = handed_message_no = None

    stale = pd.DataFrame(
        {"seq": [1, 1, 2, 3, 3, 5, 6], "message_no": [1, 2, 1, 1, 2, 1, 1]}
        | {"owner": ["a"] * 5 + ["b", "gone"], "error": None}
    )
    fates = _fates(stale, {"a": Mark(), "b": Nothing()}).tolist()
    assert fates == [
        *["sent", "sent", "outcome_unknown", "outcome_unknown", "pending"],  # a
        "pending",  # b handed nothing over
        "outcome_unknown",  # no row left to tell: it may have gone
    ]
