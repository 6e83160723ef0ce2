"""`users import` and `bulk create` write in batches of ``settings.write_batch`` rows so
that memory does not grow with the table (#12). Batching must change nothing: a table
written three rows at a time is the table written in one go, R5's duplicates and R16's
opt-outs collapse across batch boundaries, and one bad row anywhere imports nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pg import create_database
from sqlalchemy import select

from smsops import tables
from smsops.errors import InputError
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import people
from smsops.services.context import Context
from smsops.settings import Settings
from smsops.store import read
from smsops.store.schema import items, users

SMALL = 3  # rows per batch: the files below span four batches

# Rows 2 and 9 share one number written two ways (R5), row 7's number opts out (R16),
# row 5 has none (R2) and row 6 a landline (R3). Batches of 3: 1-3, 4-6, 7-9, 10.
FIRST = """user_id,phone,name,tags
u01,090-1000-0001,山田,a
u02,090-1000-0002,佐藤,
u03,080-2000-0003,鈴木,"b,c"
u04,070-3000-0004,高橋,
u05,,田中,
u06,03-1234-5678,伊藤,
u07,090-1000-0007,渡辺,
u08,０８０－２０００－０００８,山本,
u09,+81 90 1000 0002,中村,
u10,9010000010,小林,d
"""
# An update of some of them, in another order, and new users, crossing batches too.
SECOND = """user_id,phone,name,tags
u11,090-1000-0011,加藤,
u03,090-1000-0001,鈴木,changed
u12,090-1000-0012,吉田,
u01,090-1000-0013,山田,
u13,090-1000-0002,山口,
"""


@pytest.fixture
def stores(settings: Settings, tmp_path: Path, request) -> Iterator[tuple[Context, Context]]:
    """Two fresh installations on the same kind of store: one writing a few rows per
    batch, the other everything in one batch."""
    if settings.database_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path / 'whole.db'}"
    else:
        other = create_database(request.getfixturevalue("postgres_admin"))
    small = Context.open(settings.model_copy(update={"write_batch": SMALL}))
    whole = Context.open(
        settings.model_copy(
            update={
                "database_url": other,
                "outbox": tmp_path / "whole.jsonl",
                "write_batch": 1_000_000,
            }
        )
    )
    yield small, whole
    small.close()
    whole.close()


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _users(ctx: Context) -> list[tuple]:
    with read(ctx.engine) as conn:
        stmt = select(users.c.pos, users.c.user_id, users.c.phone, users.c.attrs)
        return [tuple(r) for r in conn.execute(stmt.order_by(users.c.pos))]


def _items(ctx: Context, delivery_id: int) -> list[tuple]:
    cols = [items.c.seq, items.c.message_no, items.c.phone, items.c.user_id, items.c.status]
    with read(ctx.engine) as conn:
        stmt = select(*cols).where(items.c.delivery_id == delivery_id)
        return [tuple(r) for r in conn.execute(stmt.order_by(items.c.seq, items.c.message_no))]


def _run(ctx: Context, tmp_path: Path) -> tuple[list[tuple], dict, list[tuple], list[dict]]:
    """Import both files, opt one number out, then preview and create a bulk delivery of
    two messages; return what the store and the preview hold."""
    people.import_users(ctx, [_csv(tmp_path, "first.csv", FIRST)])
    people.import_users(ctx, [_csv(tmp_path, "second.csv", SECOND)])
    people.optout_add(ctx, "090-1000-0007")
    accounts.add_tickets(ctx, 100)
    preview = dl.preview_bulk(ctx, ["春のセール", "配信停止は「停止」と返信"])
    created = dl.create_bulk(ctx, preview)
    excluded = preview.excluded_list(unmasked=True).astype(object)
    return (
        _users(ctx),
        preview.to_dict(),
        _items(ctx, created.delivery_id),
        excluded.where(excluded.notna(), None).to_dict("records"),
    )


def test_r5_r16_import_and_create_in_small_batches_match_one_batch(stores, tmp_path):
    small, whole = stores
    stored, preview, pairs, excluded = _run(small, tmp_path)
    assert (stored, preview, pairs, excluded) == _run(whole, tmp_path)

    # the batches really did the work: upserts in place, new users at the end
    # (PostgreSQL's sequence skips the numbers an update took: the order is what counts)
    assert [uid for _, uid, *_ in stored] == [f"u{i:02d}" for i in range(1, 14)]
    assert stored[2][2:] == ("090-1000-0001", '{"name":"鈴木","tags":"changed"}')
    assert stored[0][2] == "090-1000-0013"
    # R5 across batches: u09 (batch 3) and u13 (the second file's last batch) share the
    # number of u02 (batch 1); u03 took u01's old number, u01 a new one
    dup = {e["user_id"]: e for e in excluded if e["reason"] == "duplicate"}
    assert dup["u09"]["duplicate_of"] == "+819010000002"
    assert dup["u09"]["kept_by"] == "u02"
    assert dup["u13"]["kept_by"] == "u02"
    # R16 in batch 3, R2 and R3 in batch 2
    reasons = {e["user_id"]: e["reason"] for e in excluded}
    assert (reasons["u07"], reasons["u05"], reasons["u06"]) == (
        "opted_out",
        "no_phone",
        "not_mobile",
    )
    recipients = ["u01", "u02", "u03", "u04", "u08", "u10", "u11", "u12"]
    assert preview["recipients"] == len(recipients)
    assert [uid for _, m, _, uid, _ in pairs if m == 1] == recipients  # user order (R5, R10)
    assert [(seq, m) for seq, m, *_ in pairs] == [
        (s, m) for s in range(1, len(recipients) + 1) for m in (1, 2)
    ]
    assert {status for *_, status in pairs} == {"pending"}


def test_a_bad_row_in_the_last_batch_imports_nothing(stores, tmp_path):
    small, _ = stores
    people.import_users(small, [_csv(tmp_path, "first.csv", FIRST)])
    before = _users(small)
    bad = _csv(tmp_path, "bad.csv", SECOND.replace("u13,090-1000-0002", ",090-1000-0002"))
    with pytest.raises(InputError) as refused:
        people.import_users(small, [bad])
    assert "bad.csv" in str(refused.value)
    assert "row 5, column 'user_id': is empty (required) (line 6)" in str(refused.value)
    assert _users(small) == before  # the earlier batches' updates and users are not there


def test_r14_history_is_read_batch_by_batch_and_matches_one_read(stores, tmp_path):
    """#12: a delivery's detail (R14) comes out ``write_batch`` rows at a time, never the
    whole history as Python rows; the batches together are the one-read frame."""
    small, _ = stores
    _run(small, tmp_path)
    (last,) = dl.list_deliveries(small, limit=1)
    batches = list(dl.iter_delivery_items(small, last.id))
    assert [len(b) for b in batches] == [SMALL] * 5 + [1]  # 16 pairs, 3 at a time
    whole = dl.delivery_items(small, last.id)
    assert len(whole) == 16
    joined = pd.concat(batches, ignore_index=True)
    assert joined.astype(object).where(joined.notna(), None).values.tolist() == (
        whole.astype(object).where(whole.notna(), None).values.tolist()
    )
    assert [(s, m) for s, m in zip(whole["seq"], whole["message_no"], strict=True)] == [
        (s, m) for s in range(1, 9) for m in (1, 2)
    ]
    failed = list(dl.iter_delivery_items(small, last.id, failed_only=True))
    assert [len(b) for b in failed] == [0]  # nothing sent yet: one empty frame


def _big(tmp_path: Path, name: str, n: int, bad_row: int | None = None) -> Path:
    """``n`` users, each with a number of its own; ``bad_row`` (1-based) without an id."""
    lines = ["user_id,phone,name"] + [
        f"{'' if i == bad_row else f'u{i:04d}'},090-2000-{i:04d},名前{i}" for i in range(1, n + 1)
    ]
    return _csv(tmp_path, name, "\n".join(lines) + "\n")


def test_issue12_users_files_stream_in_checked_batches(tmp_path):
    """#12: a users file is read a block at a time, each batch checked on its own, and
    only user ids kept across batches; the batches together are the whole-file frame."""
    first, second = _big(tmp_path, "a.csv", 400), _csv(tmp_path, "b.csv", SECOND)
    stream = tables.stream_users_csvs([first, second], block=2_000)
    batches = list(stream.batches())
    assert len(batches) > 5  # 400 rows of ~27 bytes in blocks of 2,000 bytes
    assert max(len(b) for b in batches) < 100
    whole = tables.read_users_csvs([first, second])
    joined = pd.concat(batches, ignore_index=True)
    assert list(joined.columns) == list(whole.columns)
    assert joined.astype(object).where(joined.notna(), None).values.tolist() == (
        whole.astype(object).where(whole.notna(), None).values.tolist()
    )
    assert stream.rows == len(whole) == 405
    # UTF-8 is read from the file itself: the stream never held a file's text
    assert all(t.on_disk and t.data == b"" for t in stream.tables)


@pytest.mark.parametrize(
    ("encoding", "bom", "on_disk"),
    [("utf-8", b"", True), ("utf-8", b"\xef\xbb\xbf", True), ("cp932", b"", False)],
)
def test_issue12_streams_excel_encodings_like_the_whole_file_reader(
    tmp_path, encoding, bom, on_disk
):
    """Excel's CSV UTF-8 (with its byte order mark) streams from disk; CP932 is decoded in
    memory first, then streams; both read as the whole-file reader reads them (R3 names)."""
    text = "会員ID,携帯電話番号,電話番号,名前\r\n" + "".join(
        f"m{i},090-4000-{i:04d},03-1234-{i:04d},山田{i}\r\n" for i in range(1, 301)
    )
    path = tmp_path / "users.csv"
    path.write_bytes(bom + text.encode(encoding))
    stream = tables.stream_users_csvs([path], block=2_000)
    batches = list(stream.batches())
    assert len(batches) > 3
    assert [t.on_disk for t in stream.tables] == [on_disk]
    whole = tables.read_users_csvs([path])
    joined = pd.concat(batches, ignore_index=True)
    assert list(joined.columns) == list(whole.columns) == ["user_id", "phone", "電話番号", "名前"]
    assert joined.values.tolist() == whole.values.tolist()
    assert stream.phone_columns == whole.attrs["phone_columns"] == ["携帯電話番号"]


def test_issue12_a_bad_row_stops_the_stream_at_its_batch(tmp_path):
    """The checks run per batch: the batches before the bad row come out, then the stream
    stops (the import rolls them back and the whole-file reader names the row)."""
    path = _big(tmp_path, "a.csv", 400, bad_row=300)
    seen = []
    with pytest.raises(tables.Unstreamable):
        for batch in tables.stream_users_csvs([path], block=2_000).batches():
            seen.append(len(batch))
    assert len(seen) == 4 and sum(seen) < 300  # rows 1-269 or so, in blocks of 2,000 bytes


@pytest.mark.parametrize("repeat", [False, True])
def test_issue12_a_streamed_import_with_a_late_problem_writes_nothing(
    stores, tmp_path, monkeypatch, repeat
):
    """All or nothing across batches: a bad row (or a user_id repeated across batches,
    known only at the end) after several written batches leaves the store as it was, and
    the error names file, row, line and column as the whole-file reader does."""
    small, _ = stores
    people.import_users(small, [_csv(tmp_path, "first.csv", FIRST)])
    before = _users(small)
    monkeypatch.setattr(tables, "STREAM_BLOCK", 2_000)  # many batches of a small file
    path = _big(tmp_path, "big.csv", 400, bad_row=None if repeat else 350)
    if repeat:  # the last row repeats the first one's id
        path.write_text(path.read_text() + "u0001,090-3000-0001,again\n", encoding="utf-8")
    with pytest.raises(InputError) as refused:
        people.import_users(small, [path])
    if repeat:
        assert "row 401, column 'user_id': 'u0001' repeats row 1" in str(refused.value)
        assert "(line 402)" in str(refused.value)
    else:
        assert "row 350, column 'user_id': is empty (required) (line 351)" in str(refused.value)
    assert _users(small) == before
    done = people.import_users(small, [_big(tmp_path, "good.csv", 400)])  # streams, batches
    assert done.rows == 400 and len(_users(small)) == 10 + 400
