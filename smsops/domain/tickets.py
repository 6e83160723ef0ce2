"""Ticket allocation (R8, R10): one ticket per message per recipient, spent in order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smsops.domain.messages import MAX_MESSAGES
from smsops.domain.vocabulary import ItemError, ItemStatus

# The frame libraries are imported by the functions that build frames: the dispatcher
# reads SENT and tickets_needed from here, and `dispatch-due` with nothing due must start
# fast (#12).
if TYPE_CHECKING:
    import pandas as pd
    from pandera.typing import DataFrame

    from smsops.domain.schemas import SendPlan

# A pair's share of the tickets, the ``status`` of a send plan: what its item becomes.
SENT = ItemStatus.SENT
INSUFFICIENT = ItemError.INSUFFICIENT_TICKETS


def tickets_needed(recipients: int, messages: int) -> int:
    """R8: a delivery to N recipients with k messages needs N×k tickets."""
    return recipients * messages


def allocate_tickets(recipients: int, messages: int, balance: int) -> DataFrame[SendPlan]:
    """Allocate ``balance`` tickets over recipients × messages in send order (R10).

    Order is recipient by recipient, and for each recipient message 1 then message 2;
    the first ``balance`` pairs are ``sent``, the rest ``insufficient_tickets``. With
    10 recipients × 2 messages and 15 tickets, recipients 1–7 get both, recipient 8
    gets message 1 only, 9–10 get nothing.
    """
    if recipients < 0:
        raise ValueError(f"recipients must be >= 0, got {recipients}")
    if not 1 <= messages <= MAX_MESSAGES:
        raise ValueError(f"a delivery carries 1 or 2 messages (R6), got {messages}")
    if balance < 0:
        raise ValueError(f"balance must be >= 0, got {balance}")
    import numpy as np
    import pandas as pd

    seq = np.repeat(np.arange(1, recipients + 1, dtype=np.int64), messages)
    message_no = np.tile(np.arange(1, messages + 1, dtype=np.int64), recipients)
    return allocate_plan(pd.DataFrame({"seq": seq, "message_no": message_no}), balance)


def allocate_plan(pairs: pd.DataFrame, balance: int) -> DataFrame[SendPlan]:
    """Allocate over any (seq, message_no) pairs already in send order (e.g. a resend of
    exactly the failed pairs, R15): the first ``balance`` pairs are sent."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from pandera.typing import DataFrame

    from smsops.domain.schemas import STRING, SendPlan

    codes = (np.arange(len(pairs)) >= max(balance, 0)).astype(np.int8)  # 0 sent, 1 not
    statuses = pa.array([SENT, INSUFFICIENT], pa.large_string())
    status = pa.DictionaryArray.from_arrays(codes, statuses).cast(pa.large_string())
    out = pairs[["seq", "message_no"]].reset_index(drop=True)
    out = out.assign(status=pd.array(status, dtype=STRING))
    return DataFrame[SendPlan](out)


def funded_pairs(pairs: int, balance: int) -> int:
    """R10: how many of ``pairs`` waiting in send order ``balance`` tickets fund — the
    first ones, as :func:`allocate_plan` plans them (the store needs only the count and
    the last funded pair, never the pairs themselves)."""
    if pairs < 0 or balance < 0:
        raise ValueError(f"pairs and balance must be >= 0, got {pairs} and {balance}")
    return min(pairs, balance)
