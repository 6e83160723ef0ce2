"""The delivery lifecycle before and after sending; sending itself is
:mod:`smsops.services.dispatch`.

- :mod:`.preview`: the confirmation screen of a bulk delivery (R13), :func:`preview_bulk`
- :mod:`.create`: saving it (R1, R4, R9, R12), :func:`create_bulk`
- :mod:`.individual`: an individual send to one number, :func:`send_individual`
- :mod:`.history`: the list, one delivery, its pairs (R14), :func:`cancel` (R12)
- :mod:`.resend`: the failed pairs and their resend (R15)

Callers import the package (``from smsops.services import deliveries as dl``); the names
below are its public face. pandas, the frame-building domain, the user tables and the bulk
store helpers are imported by the functions that use them: `deliveries list` and
`dispatch-due` with nothing due must not pay for them (#12, tests/test_fast_start.py).
"""

from smsops.services.deliveries.create import Created, create_bulk
from smsops.services.deliveries.history import (
    FINAL,
    ITEM_ERROR,
    ITEM_STATUS,
    Cancelled,
    DeliverySummary,
    cancel,
    delivery_items,
    delivery_summary,
    iso_times,
    iter_delivery_items,
    list_deliveries,
    waiting_demand,
)
from smsops.services.deliveries.individual import send_individual
from smsops.services.deliveries.preview import SAMPLE, Preview, preview_bulk
from smsops.services.deliveries.resend import (
    NOT_RESENT,
    failed_pairs,
    resend_bulk,
    resend_individual,
)

__all__ = [
    "FINAL",
    "ITEM_ERROR",
    "ITEM_STATUS",
    "NOT_RESENT",
    "SAMPLE",
    "Cancelled",
    "Created",
    "DeliverySummary",
    "Preview",
    "cancel",
    "create_bulk",
    "delivery_items",
    "delivery_summary",
    "failed_pairs",
    "iso_times",
    "iter_delivery_items",
    "list_deliveries",
    "preview_bulk",
    "resend_bulk",
    "resend_individual",
    "send_individual",
    "waiting_demand",
]
