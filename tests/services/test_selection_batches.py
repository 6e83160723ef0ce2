"""The bulk selection reads the users batch by batch (#12), and selects from them exactly
what the whole table gives (R3, R5, R16), on SQLite and PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest
from support import add_users, mobile

from smsops.domain.phones import mask_phones
from smsops.domain.recipients import select_recipients
from smsops.errors import RuleError
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import people
from smsops.services.context import Context
from smsops.store import read


def test_users_are_read_in_batches_in_registration_order(ctx: Context):
    phones = [mobile(i) for i in range(7)] + [None, "03-1234-5678"]
    add_users(ctx, phones)
    with read(ctx.engine) as conn:
        batches = list(people.iter_users(conn, 4))
    assert [len(b) for b in batches] == [4, 4, 1]
    whole = people.load_users(ctx)
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), whole)


def test_no_users_is_one_empty_batch(ctx: Context):
    with read(ctx.engine) as conn:
        (batch,) = people.iter_users(conn, 4)
    assert list(batch.columns) == ["user_id", "phone"]
    assert batch.empty


def small_batches(ctx: Context, seen: list[tuple[int, int, str]]) -> Context:
    """``ctx`` reading and writing 3 rows at a time, its progress reports kept in ``seen``."""
    settings = ctx.settings.model_copy(update={"write_batch": 3})
    return Context.open(
        settings, progress=lambda done, total, what: seen.append((done, total, what))
    )


def stored_pairs(ctx: Context, delivery_id: int) -> list[tuple]:
    frame = dl.delivery_items(ctx, delivery_id)
    return list(frame[["seq", "message_no", "phone", "user_id"]].itertuples(index=False, name=None))


def test_r5_r16_create_selects_and_writes_batch_by_batch_what_the_whole_table_gives(ctx: Context):
    # duplicates and opt-outs across batches of 3 users: u5 repeats u1's number, u8 u6's
    phones = [mobile(1), None, mobile(2), "03-1234-5678", "+81 90-1000-0001"]
    phones += [mobile(3), mobile(4), mobile(3).replace("-", ""), mobile(5), mobile(6)]
    add_users(ctx, phones)
    people.optout_add(ctx, mobile(4))
    accounts.add_tickets(ctx, 100)
    seen: list[tuple[int, int, str]] = []
    small = small_batches(ctx, seen)

    preview = dl.preview_bulk(small, ["一通目", "二通目"])
    assert preview.held is None  # only the counts and the sample were kept
    whole = select_recipients(people.load_users(ctx), people.load_optouts(ctx))
    assert (preview.recipients, preview.users) == (len(whole.recipients), 10)
    assert (
        preview.excluded
        == whole.counts()
        == {"no_phone": 1, "not_mobile": 1, "opted_out": 1, "duplicate": 2}
    )
    assert preview.diagnosis == whole.diagnosis()
    assert preview.sample == mask_phones(whole.recipients["phone"].head(dl.SAMPLE)).tolist()

    created = dl.create_bulk(small, preview)
    # the users were read and selected 3 at a time, their pairs written as they came
    selecting = [(done, total) for done, total, what in seen if what == "selecting recipients"]
    assert selecting == [(3, 10), (6, 10), (9, 10), (10, 10)]
    r = whole.recipients
    expected = [
        (seq, no, phone, user)
        for seq, phone, user in zip(r["seq"], r["phone"], r["user_id"], strict=True)
        for no in (1, 2)
    ]
    assert stored_pairs(ctx, created.delivery_id) == expected
    assert created.tickets_needed == len(expected) == 2 * 5


def test_r13_create_refuses_a_selection_that_changed_since_the_preview(ctx: Context):
    add_users(ctx, [mobile(i) for i in range(5)])
    accounts.add_tickets(ctx, 100)
    small = small_batches(ctx, [])
    preview = dl.preview_bulk(small, ["一通目"])
    people.optout_add(ctx, mobile(4))
    with pytest.raises(
        RuleError, match=r"R13: the users changed since the preview \(5 recipients, now 4\)"
    ):
        dl.create_bulk(small, preview)
    assert dl.list_deliveries(ctx) == []  # nothing saved
    assert dl.create_bulk(small, dl.preview_bulk(small, ["一通目"])).recipients == 4
