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
_TAG = re.compile(r"(?<!\d)%[\w.\-]{1,40}%|\$?\{\{?\s*[\w.\-]{1,40}\s*\}?\}")


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
        tag = _TAG.search(unicodedata.normalize("NFKC", text))
        if tag:
            raise MessageError(
                "R7",
                f"message {number} contains the substitution tag {tag.group()!r}; "
                "tags are not supported in SMS and would be sent literally",
                message_no=number,
                tag=tag.group(),
            )
        out.append(Message(number, text))
    return out
