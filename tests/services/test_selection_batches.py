"""The bulk selection reads the users batch by batch (#12), and selects from them exactly
what the whole table gives (R3, R5, R16), on SQLite and PostgreSQL."""

from __future__ import annotations

import pandas as pd
from support import add_users, mobile

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
