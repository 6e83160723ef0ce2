"""The words smsops stores, reports and prints for statuses and reasons, each spelled once.

Every set is a ``StrEnum``: a member equals its string (``ItemStatus.SENT == "sent"``)
and is written as it (``str()``, ``f""``, ``json.dumps``, SQL parameters, pandas), so the
store, ``--json``, the frames and the CLI read the same words as before. Imports only
``enum``: the light CLI commands read it and must start fast (#12).
"""

from __future__ import annotations

from enum import StrEnum


class ItemStatus(StrEnum):
    """Where one (recipient, message) pair of a delivery stands: ``delivery_items.status``."""

    PENDING = "pending"
    SENT = "sent"
    ERROR = "error"  # the reason is in ``delivery_items.error`` (:class:`ItemError`)
    CANCELLED = "cancelled"
    # Written up to store version 9 while a pair was with the gateway; only old databases
    # hold it (migrations settle it, history reads it as pending).
    SENDING = "sending"


class DeliveryStatus(StrEnum):
    """Where a delivery stands: ``deliveries.status``."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    PARTIALLY_SENT = "partially_sent"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def finished(cls, sent: int, errors: int) -> DeliveryStatus:
        """How a delivery ends, from its pairs sent and in error: ``sent`` when none
        failed, ``failed`` when none was sent, else ``partially_sent``."""
        if errors == 0:
            return cls.SENT
        return cls.FAILED if sent == 0 else cls.PARTIALLY_SENT


class PauseReason(StrEnum):
    """What paused a delivery (status ``paused``): ``deliveries.paused_for``. Either way
    ``dispatch-due`` resumes it at ``resume_at``."""

    GATEWAY_DOWN = "gateway_down"  # the gateway could not be reached; tried again later
    WINDOW_CLOSED = "window_closed"  # the sending window closed (#11); resumes at its opening


# A delivery in one of these is over: nothing of it will be sent any more.
FINAL_DELIVERY = (
    DeliveryStatus.SENT,
    DeliveryStatus.PARTIALLY_SENT,
    DeliveryStatus.FAILED,
    DeliveryStatus.CANCELLED,
)


class ItemError(StrEnum):
    """Why a pair is an ``error``: ``delivery_items.error``. A gateway's refusal is
    written as ``rejected: <its reason>`` (:data:`REJECTED_PREFIX`), not a member."""

    OUTCOME_UNKNOWN = "outcome_unknown"  # the answer was lost: it may have gone out
    GATEWAY_UNAVAILABLE = "gateway_unavailable"  # the gateway did not take it
    GATEWAY_ERROR = "gateway_error"  # a gateway said error without a reason
    INSUFFICIENT_TICKETS = "insufficient_tickets"  # R10
    OPTED_OUT = "opted_out"  # R16
    PLAN_BELOW_STANDARD = "plan_below_standard"


REJECTED_PREFIX = "rejected: "


class Exclusion(StrEnum):
    """Why a user of a table receives nothing (R2–R5, R16), in the order reports list them."""

    PHONE_FIELD_DISABLED = "phone_field_disabled"
    NO_PHONE = "no_phone"
    MALFORMED = "malformed"
    NOT_MOBILE = "not_mobile"
    OPTED_OUT = "opted_out"
    DUPLICATE = "duplicate"


class ReplyAction(StrEnum):
    """What smsops did with a reply (R16): ``replies.action``."""

    OPTED_OUT = "opted_out"  # the sender is on the opt-out list now
    REVIEW = "review"  # it may be a refusal: a person decides
    IGNORED = "ignored"


class DlrStatus(StrEnum):
    """What a delivery report says of a message: ``delivery_items.dlr_status``."""

    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    BUFFERED = "buffered"
    SMSC_ACCEPTED = "smsc_accepted"
    SMSC_REJECTED = "smsc_rejected"
