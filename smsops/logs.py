"""Phone numbers are personal data: every log line smsops or Prefect writes is masked."""

from __future__ import annotations

import logging
import re
import unicodedata

# Every way R3 accepts a number: E.164, 81…, 00 81… and 010 81… (dialled from abroad or
# out of Japan), national with 0, an eaten leading 0 (9012345678), "(0)" after the
# country code, parentheses, full-width digits and the separators people type (spaces,
# dots, hyphens, Unicode dashes, ー). Mobiles first, also with slashes and underscores.
_D = "[0-9０-９]"
_SEP_CHARS = r" \t\u3000.\-‐‑‒–—―−ー－・"
# A blank as repr() writes it in an error line: '０９０\u3000１２３４\u3000５６７８'.
_ESCAPED = r"\\(?:[tnrf]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})"
_SEP = f"(?:[{_SEP_CHARS}]|{_ESCAPED})?"
# A number starts after no digit (but the last one of such an escape), never inside one.
_START = (
    r"(?:(?<![0-9０-９])|(?<=\\x[0-9a-fA-F]{2})|(?<=\\u[0-9a-fA-F]{4}))"
    r"(?<!\\x)(?<!\\x[0-9a-fA-F])"
    r"(?<!\\u)(?<!\\u[0-9a-fA-F])(?<!\\u[0-9a-fA-F]{2})(?<!\\u[0-9a-fA-F]{3})"
)
_MSEP = f"(?:[{_SEP_CHARS}/_／＿]|{_ESCAPED})?"  # a mobile's shape is specific enough for these
_IDD = rf"(?:[+＋]|[0０]{{2}}{_SEP}|[0０][1１][0０]{_SEP})"  # +, 00, 010
_CC = rf"{_IDD}?(?:81|８１){_SEP}(?:[(（]?[0０][)）]?)?{_SEP}"  # +81, 81, 0081, +81 (0)
_ZERO = "[(（]?[0０]"
_PHONE = re.compile(
    rf"{_START}(?:{_CC}|{_ZERO})?([6-9６-９][0０])[)）]?{_MSEP}({_D}{{4}}){_MSEP}({_D}{{4}})(?![0-9０-９])"
    # other Japanese numbers; not when more digits follow (a foreign number's head)
    rf"|{_START}(?:{_CC}|{_ZERO})({_D}{{1,4}})[)）]?{_SEP}({_D}{{1,4}}){_SEP}({_D}{{4}})"
    rf"(?![0-9０-９])(?!(?:[{_SEP_CHARS}]|{_ESCAPED})[0-9０-９])"
)

# Anything else that looks like a phone number (foreign ones, odd separators, runs of
# them): digit groups joined by separators. Not a date (which a time may follow), nor a
# chain that continues an identifier such as smsops-12-345678-1.
_G_SEP = f"(?:[{_SEP_CHARS}/_／＿()（）]|{_ESCAPED})"
_DS = "[-/.－／．]"
_MONTH, _DAY = "(?:0?[1-9]|1[0-2])", "(?:0?[1-9]|[12][0-9]|3[01])"
_DATE = (  # 2026-12-01, +10000-01-01, 0001-01-01, 01/12/2026
    rf"(?:{_D}{{4,}}{_DS}{_MONTH}{_DS}{_DAY}|{_DAY}{_DS}{_DAY}{_DS}{_D}{{4}})(?![0-9０-９])"
)
_LOOKS_LIKE_A_PHONE = re.compile(
    rf"{_START}(?<![0-9A-Za-z０-９][-_/.])([+＋])?(?!{_DATE}){_D}+"
    rf"(?:{_G_SEP}+(?!{_DATE}){_D}+)*(?![0-9０-９])"
)
_GROUPS = re.compile(f"{_D}+")
_ESCAPED_RE = re.compile(_ESCAPED)
# The digits of a Japanese mobile in any form (when written in groups too short to tell).
_JP_MOBILE_DIGITS = re.compile(r"(?:(?:00|010)?81)?0?[6-9]0\d{8}")
_FREE_DIAL = re.compile(r"0120\d{6}")  # a business's published toll-free number
# A decimal number (1764050000.123456, an epoch time) or an IPv4 address (a gateway host).
_NOT_A_PHONE = re.compile(r"\d+\.\d+|\d{1,3}(?:\.\d{1,3}){3}")


def mask_text(text: str) -> str:
    """Mask every phone number in free text: ``+819012345678`` → ``090-****-5678``,
    ``+1 212 555 0100`` → ``***-****-0100``; dates, times and counts are left alone.

    >>> mask_text("0081-90-1234-5678 at 2026-12-01 10:00, 1,550 tickets")
    '090-****-5678 at 2026-12-01 10:00, 1,550 tickets'
    """

    def japanese(m: re.Match[str]) -> str:
        if m.group(1):
            return f"0{_ascii(m.group(1))}-****-{_ascii(m.group(3))}"
        return f"***-****-{_ascii(m.group(6))}"

    def other(m: re.Match[str]) -> str:
        found, plus = m.group(0), m.group(1) is not None
        groups = _GROUPS.findall(_ESCAPED_RE.sub(" ", found))
        digits = _ascii("".join(groups))
        if len(digits) < (8 if plus else 10) or _FREE_DIAL.fullmatch(digits):
            return found
        if plus:
            return f"***-****-{digits[-4:]}"
        if len(groups) == 1:  # one bare run: an id or a timestamp, unless dialled with 00
            return f"***-****-{digits[-4:]}" if digits.startswith("00") else found
        if _NOT_A_PHONE.fullmatch(found):
            return found
        widths = {len(g) for g in groups}
        if (max(widths) < 3 or len(widths) == 1) and not _JP_MOBILE_DIGITS.fullmatch(digits):
            return found  # a list: 060/070/080/090, 1 2 3 4 5 6 7 8 9 10
        return f"***-****-{digits[-4:]}"

    return _LOOKS_LIKE_A_PHONE.sub(other, _PHONE.sub(japanese, text))


def _ascii(digits: str) -> str:
    return unicodedata.normalize("NFKC", digits)


class MaskPhones(logging.Filter):
    """A logging filter that masks phone numbers in the formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        # A traceback carries the exception's message (and the failing line's locals in
        # some formatters): format it now, masked, so handlers use this text.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


_FILTER = MaskPhones()


def install_masking(*logger_names: str) -> None:
    """Mask phone numbers in every handler of the root, ``smsops`` and Prefect loggers."""
    names = ("", "smsops", "prefect", "prefect.flow_runs", "prefect.task_runs", *logger_names)
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
