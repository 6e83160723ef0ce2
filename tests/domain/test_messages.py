"""R6, R7: one or two messages, 70 UTF-16 units each, no substitution tags."""

from __future__ import annotations

import pytest

from smsops import sms_length, validate_messages
from smsops.errors import MessageError


def test_r6_one_or_two_messages_are_accepted():
    msgs = validate_messages(["セール開始！", "詳細はWebで"])
    assert [(m.number, m.text) for m in msgs] == [(1, "セール開始！"), (2, "詳細はWebで")]


@pytest.mark.parametrize("texts", [[], ["a", "b", "c"]])
def test_r6_message_count_outside_1_to_2_is_refused(texts):
    with pytest.raises(MessageError, match="1 or 2 messages"):
        validate_messages(texts)


def test_r6_seventy_characters_is_the_limit():
    validate_messages(["あ" * 70])
    with pytest.raises(MessageError) as err:
        validate_messages(["ok", "あ" * 71])
    assert err.value.details["message_no"] == 2
    assert err.value.details["length"] == 71
    assert "message 2 is 71 characters" in str(err.value)


def test_r6_emoji_outside_the_bmp_counts_two():
    assert sms_length("😀") == 2
    validate_messages(["あ" * 68 + "😀"])
    with pytest.raises(MessageError, match="71 characters"):
        validate_messages(["あ" * 69 + "😀"])


@pytest.mark.parametrize("text", ["", "   ", "\n", "\u200b", "\ufeff", "\u3000\u200b "])
def test_r6_empty_message_is_refused(text):
    with pytest.raises(MessageError, match="message 1 is empty"):
        validate_messages([text])


@pytest.mark.parametrize(
    "text",
    [
        "%name%様、セールです",
        "こんにちは％会社名％です",
        "%user_id%",
        "{name}様、セールです",
        "{{ first_name }}さん",
        "${coupon}をご利用ください",
        "｛氏名｝様",
    ],
)
def test_r7_substitution_tags_are_refused(text):
    with pytest.raises(MessageError) as err:
        validate_messages(["ok", text])
    assert err.value.rule == "R7"
    assert "message 2" in str(err.value)
    assert "not supported" in str(err.value)


def test_r7_a_lone_percent_sign_is_fine():
    validate_messages(["全品50%オフ！", "最大 30% 還元 と 10% 割引"])
    validate_messages(["50%オフ、最大30%", "本日限り50%オフ！さらに先着100名様は60%オフ"])
    validate_messages(["５０％ＯＦＦ＋１０％", "20%OFF!30%"])
    validate_messages(["【重要】[お知らせ] {} は記号です", "顔文字 (^_^) と ${ } と { a b }"])


def test_r6_broken_characters_are_refused_not_a_crash():
    with pytest.raises(MessageError, match="message 2 is not valid text"):
        validate_messages(["ok", "bad \udcff byte"])  # what a wrong-encoding argv gives


@pytest.mark.parametrize(
    "text",
    [
        "冬物セール https://ex.jp/s?c=%E5%86%AC",  # 冬, percent-encoded
        "https://ex.jp/a%20b%20c",
        "https://ex.jp/s?q=%e3%82%bb%e3%83%bc%e3%83%ab&x=%2F",  # lower case, and ASCII
        "詳細 https://ex.jp/%7Buser%7D",  # an encoded {user} is no template
        "ｈｔｔｐｓ://ex.jp/a％20b％20c",  # full width, as NFKC reads it
    ],
)
def test_r7_percent_encoded_urls_are_not_tags(text):
    validate_messages([text])


@pytest.mark.parametrize(
    ("text", "tag"),
    [  # each escape comes first: it must not be taken for the tag
        ("https://ex.jp/s?c=%E5%86%AC %name%様", "%name%"),
        ("https://ex.jp/?c=%E5%86%AC&u=%user_id%", "%user_id%"),
        ("https://ex.jp/a%20b%20c %date%にお届け", "%date%"),  # %da alone is no character
        ("https://ex.jp/a%20b%20c/%address%", "%address%"),
        ("https://ex.jp/%E5%86%AC%cafe%", "%cafe%"),  # 冬, then %ca: no character
        ("https://ex.jp/a%20b%name%", "%name%"),  # the % closing a candidate opens the tag
        ("https://ex.jp/?q=%20%name%", "%name%"),  # the 0 of %20 is no percentage
    ],
)
def test_r7_tags_next_to_percent_escapes_are_still_refused(text, tag):
    with pytest.raises(MessageError) as err:
        validate_messages([text])
    assert err.value.rule == "R7" and err.value.details["tag"] == tag
