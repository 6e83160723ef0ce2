"""smsops: bulk SMS campaigns for marketing teams in Japan.

The names notebooks use; everything else is reachable from its module.

Each name is imported on first use (PEP 562): ``import smsops.cli`` runs this file too,
and a command that touches no frame must not load pandas, pyarrow, pandera and
phonenumbers for it (#12). ``from smsops import classify_phones`` works as ever.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smsops.domain.messages import sms_length, validate_messages
    from smsops.domain.phones import classify_phones, mask_phone
    from smsops.domain.recipients import Selection, select_recipients
    from smsops.domain.tickets import allocate_tickets, tickets_needed
    from smsops.errors import SmsopsError

_WHERE = {  # public name → the module that defines it
    "Selection": "smsops.domain.recipients",
    "SmsopsError": "smsops.errors",
    "allocate_tickets": "smsops.domain.tickets",
    "classify_phones": "smsops.domain.phones",
    "mask_phone": "smsops.domain.phones",
    "select_recipients": "smsops.domain.recipients",
    "sms_length": "smsops.domain.messages",
    "tickets_needed": "smsops.domain.tickets",
    "validate_messages": "smsops.domain.messages",
}

__all__ = [
    "Selection",
    "SmsopsError",
    "allocate_tickets",
    "classify_phones",
    "mask_phone",
    "select_recipients",
    "sms_length",
    "tickets_needed",
    "validate_messages",
]


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module 'smsops' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value  # once: later look-ups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
