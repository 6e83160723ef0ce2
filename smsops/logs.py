"""Phone numbers are personal data: every log line smsops or Prefect writes is masked."""

from __future__ import annotations

import logging
import re

# E.164 Japanese numbers and national forms with or without hyphens/spaces.
_PHONE = re.compile(
    r"(?<!\d)(?:\+81[\s-]?|0)([6-9]0)[\s-]?(\d{4})[\s-]?(\d{4})(?!\d)"
    r"|(?<!\d)(?:\+81[\s-]?|0)(\d{1,4})[\s-]?(\d{1,4})[\s-]?(\d{4})(?!\d)"
)


def mask_text(text: str) -> str:
    """Mask every phone number in free text: ``+819012345678`` → ``090-****-5678``."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return f"0{m.group(1)}-****-{m.group(3)}"
        return f"***-****-{m.group(6)}"

    return _PHONE.sub(repl, text)


class MaskPhones(logging.Filter):
    """A logging filter that masks phone numbers in the formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
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
