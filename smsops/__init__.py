"""smsops: bulk SMS campaigns for marketing teams in Japan.

The names notebooks use; everything else is reachable from its module.
"""

from smsops.domain.messages import sms_length, validate_messages
from smsops.domain.phones import classify_phones, mask_phone
from smsops.domain.recipients import Selection, select_recipients
from smsops.domain.tickets import allocate_tickets, tickets_needed
from smsops.errors import SmsopsError

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
