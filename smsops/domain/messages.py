"""Message rules (R6, R7): one or two messages of at most 70 UTF-16 code units, no tags."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from smsops.errors import MessageError

MAX_MESSAGES = 2
MAX_UNITS = 70  # UCS-2 SMS: 70 16-bit units per message

# Substitution tags, checked after NFKC (so full-width ％ and ｛｝ count too): %name% and
# %会社名% of the email product, and the {name}, {{name}}, ${name} of template tools. A tag
# holds one word (letters, digits, _ . -), and a % right after a digit is a percentage,
# so "50%オフ、最大30%", "50%OFF+10%" or "{ }" are text.
_TAG = re.compile(r"%[\w.\-]{1,40}%|\$?\{\{?\s*[\w.\-]{1,40}\s*\}?\}")
# URL escapes: "%20", and "%E5%86%AC" (冬) in a percent-encoded link. A "%" that begins one
# opens no tag, so "https://ex.jp/a%20b%20c" is text; "%date%" or "%address%" stay tags,
# since "%da" or "%ad" alone is not UTF-8 (see _escape_starts).
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def sms_length(text: str) -> int:
    """Length as the network counts it: UTF-16 code units (an emoji outside the BMP is 2).

    >>> sms_length("こんにちは😀")
    7
    """
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class Message:
    number: int  # 1 or 2
    text: str

    @property
    def length(self) -> int:
        return sms_length(self.text)


def _utf8_length(lead: int) -> int:
    """Bytes in the UTF-8 character that starts with ``lead``; 0 if none starts so."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _escape_starts(text: str) -> set[int]:
    """Where the ``%`` of each URL escape is: runs of ``%XX`` that spell whole UTF-8
    characters. ``"%E5%86%AC"`` gives ``{0, 3, 6}``; the ``%da`` of ``"%date%"`` gives
    nothing, as byte 0xDA alone is no character.
    """
    starts: set[int] = set()
    for run in _ESCAPES.finditer(text):
        data = bytes.fromhex(run.group().replace("%", ""))
        i = 0
        while i < len(data):
            size = _utf8_length(data[i])
            try:
                ok = size > 0 and i + size <= len(data) and bool(data[i : i + size].decode())
            except UnicodeDecodeError:
                ok = False
            if not ok:
                i += 1
                continue
            starts.update(run.start() + 3 * j for j in range(i, i + size))
            i += size
    return starts


def find_tag(text: str) -> str | None:
    """The first substitution tag in ``text`` (R7), or None.

    >>> find_tag("%name%様、https://ex.jp/s?c=%E5%86%AC")
    '%name%'
    >>> find_tag("https://ex.jp/a%20b%20c") is None
    True
    """
    text = unicodedata.normalize("NFKC", text)
    escapes = _escape_starts(text)
    pos = 0
    while tag := _TAG.search(text, pos):
        at = tag.start()
        # "30%OFF%" is a percentage, but the 0 of "%20%name%" ends an escape, not a number
        percentage = at > 0 and text[at - 1].isdecimal() and at - 3 not in escapes
        if text[at] != "%" or not (at in escapes or percentage):
            return tag.group()
        pos = at + 1  # "%20b%name%": the % that ends one candidate opens the next
    return None


def _visible(text: str) -> bool:
    """Has something a reader sees: not only spaces, controls or invisible format
    characters (zero-width space, BOM)."""
    return any(unicodedata.category(ch)[0] not in "ZC" for ch in text)


def validate_messages(texts: Sequence[str]) -> list[Message]:
    """Check R6 and R7 and return the messages numbered from 1; raise on the first problem."""
    texts = list(texts)
    if not 1 <= len(texts) <= MAX_MESSAGES:
        raise MessageError(
            "R6", f"a delivery carries 1 or 2 messages, got {len(texts)}", messages=len(texts)
        )
    out = []
    for number, text in enumerate(texts, start=1):
        if any("\ud800" <= ch <= "\udfff" for ch in text):
            raise MessageError(
                "R6",
                f"message {number} is not valid text (a broken character, e.g. from a "
                "wrong encoding)",
                message_no=number,
            )
        length = sms_length(text)
        if not _visible(text):
            raise MessageError("R6", f"message {number} is empty", message_no=number, length=length)
        if length > MAX_UNITS:
            raise MessageError(
                "R6",
                f"message {number} is {length} characters long; the limit is {MAX_UNITS} "
                "(counted as UTF-16 units: an emoji may count 2)",
                message_no=number,
                length=length,
            )
        tag = find_tag(text)
        if tag:
            raise MessageError(
                "R7",
                f"message {number} contains the substitution tag {tag!r}; "
                "tags are not supported in SMS and would be sent literally",
                message_no=number,
                tag=tag,
            )
        out.append(Message(number, text))
    return out
