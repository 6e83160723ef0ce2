"""Phone numbers are personal data: every log line smsops or Prefect writes is masked."""

from __future__ import annotations

import logging
import re
import unicodedata

# Every way R3 accepts a number: E.164, 81…, national with 0, an eaten leading 0
# (9012345678), "(0)" after the country code, parentheses, full-width digits and the
# separators people type (spaces, dots, hyphens, Unicode dashes, ー). Mobiles first.
_D = "[0-9０-９]"
_SEP = r"[ \t\u3000.\-‐‑‒–—―−ー－・]?"
_CC = rf"[+＋]?(?:81|８１){_SEP}(?:[(（][0０][)）])?{_SEP}"  # +81, 81, +81 (0)
_ZERO = "[(（]?[0０]"
_PHONE = re.compile(
    rf"(?<![0-9０-９])(?:{_CC}|{_ZERO})?([6-9６-９][0０])[)）]?{_SEP}({_D}{{4}}){_SEP}({_D}{{4}})(?![0-9０-９])"
    rf"|(?<![0-9０-９])(?:{_CC}|{_ZERO})({_D}{{1,4}})[)）]?{_SEP}({_D}{{1,4}}){_SEP}({_D}{{4}})(?![0-9０-９])"
)


def mask_text(text: str) -> str:
    """Mask every phone number in free text: ``+819012345678`` → ``090-****-5678``."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return f"0{_ascii(m.group(1))}-****-{_ascii(m.group(3))}"
        return f"***-****-{_ascii(m.group(6))}"

    return _PHONE.sub(repl, text)


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
