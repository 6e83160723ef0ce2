"""Replies (R16) and delivery reports (R14, R15) as the network sends them back."""

from __future__ import annotations

from sqlalchemy import select

from smsops.services import people
from smsops.services.inbound import classify_reply, handle_reply, list_replies, replies_frame
from smsops.store import read
from smsops.store.schema import replies

# Real-world replies to a Japanese marketing SMS: what each must do.
REFUSALS = [
    "停止",
    "配信停止",
    "ストップ",
    "ｽﾄｯﾌﾟ",
    "解除",
    "配信解除",
    "受信拒否",
    "拒否",
    "STOP",
    "ＳＴＯＰ",
    "stop",
    "UNSUBSCRIBE",
    "「停止」",
    "『配信停止』",
    "停止してください",
    "停止して下さい。",
    "配信を停止してください",
    "配信を停止",
    "配信停止希望",
    "配信停止でお願いします",
    "配信停止をお願いします",
    "配信解除お願いします",
    "拒否します",
    "すみません、配信停止してください",
    "いつもありがとうございます。配信停止お願いします",
    "もう送らないでください",
    "配信停止していただけますか？",
    "stop please",
    "Please stop",
    "STOP!",
    "　ＳＴＯＰ　",
    " 配信停止。\n",
    "opt out",
]
REVIEW = [
    ("停止しないで", "negated"),
    ("停止しないでください", "negated"),
    ("don't stop", "negated"),
    ("停止ってどうやるの？", "question"),
    ("配信停止はどこからできますか?", "question"),
    ("how do I stop?", "question"),
    ("STOP IT", "mentions_stop"),
    ("ロック解除", "mentions_stop"),
]
IGNORED = ["了解", "ありがとうございます", "予約の変更をお願いします", "OK"]


def test_r16_every_written_form_of_refusal_opts_out_and_only_those_that_may_be_are_for_review():
    expected = (
        [(t, ("opted_out", "stop_request")) for t in REFUSALS]
        + [(t, ("review", why)) for t, why in REVIEW]
        + [(t, ("ignored", "not_a_stop_request")) for t in IGNORED]
    )
    wrong = [(t, classify_reply(t), want) for t, want in expected if classify_reply(t) != want]
    assert wrong == []


def test_r16_every_reply_is_stored_refusals_opt_out_and_ambiguous_ones_are_listed_for_review(ctx):
    table = (
        [(f"+8190{1000_0000 + i}", t) for i, t in enumerate(REFUSALS)]
        + [(f"+8180{1000_0000 + i}", t) for i, (t, _) in enumerate(REVIEW)]
        + [(f"+8170{1000_0000 + i}", t) for i, t in enumerate(IGNORED)]
    )
    results = [handle_reply(ctx, sender, text) for sender, text in table]
    assert [r.action for r in results] == (
        ["opted_out"] * len(REFUSALS) + ["review"] * len(REVIEW) + ["ignored"] * len(IGNORED)
    )
    # every refusal form opted its sender out; no one else
    assert sorted(people.load_optouts(ctx)) == sorted(s for s, _ in table[: len(REFUSALS)])
    # every reply is stored, with what was done and why
    with read(ctx.engine) as conn:
        stored = conn.execute(
            select(replies.c.sender, replies.c.text, replies.c.action).order_by(replies.c.id)
        ).all()
    assert [(s, t) for s, t, _ in stored] == table
    # the ambiguous ones are listed for review, newest first, numbers masked
    listed = list_replies(ctx, action="review")
    assert [r.text for r in listed] == [t for t, _ in reversed(REVIEW)]
    assert [r.reason for r in listed] == [w for _, w in reversed(REVIEW)]
    assert all(r.sender.startswith("080-****-") for r in listed)
    frame = replies_frame(ctx)
    assert len(frame) == len(table) and not frame["sender"].str.startswith("+").any()
    assert list_replies(ctx, unmasked=True)[0].sender == table[-1][0]


def test_r16_a_repeated_refusal_is_stored_again_and_lists_the_sender_once(ctx):
    first = handle_reply(ctx, "819012345678", "停止")
    again = handle_reply(ctx, "+819012345678", "STOP")
    assert (first.action, first.reason, first.phone) == (
        "opted_out",
        "stop_request",
        "+819012345678",
    )
    assert (again.action, again.reason) == ("opted_out", "already_opted_out")
    assert people.load_optouts(ctx) == ["+819012345678"]
    assert len(list_replies(ctx)) == 2


def test_r16_a_refusal_from_a_sender_that_is_no_phone_number_is_kept_not_dropped(ctx):
    result = handle_reply(ctx, "SHOPNEWS", "STOP")
    assert (result.action, result.reason, result.phone) == ("ignored", "not_a_phone", None)
    (row,) = list_replies(ctx)
    assert (row.sender, row.text, row.action) == ("SHOPNEWS", "STOP", "ignored")


def test_r16_a_phone_number_inside_a_reply_text_is_masked_where_shown(ctx):
    handle_reply(ctx, "+819012345678", "09011112222に変更してください")
    (row,) = list_replies(ctx)
    assert "09011112222" not in row.text and row.sender == "090-****-5678"
    assert list_replies(ctx, unmasked=True)[0].text.startswith("09011112222")
