"""SMS gateways behind one small interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from smsops.settings import Settings

if TYPE_CHECKING:  # batches are frames, but every Context imports this module (#12)
    import pandas as pd

# Columns of a batch handed to a gateway, and of what it answers.
BATCH_COLUMNS = ["delivery_id", "seq", "message_no", "phone", "text", "idempotency_key"]
RESULT_COLUMNS = ["idempotency_key", "status", "error", "gateway_ref"]  # status: sent | error


# ``hand_off(upto, answered)``: a gateway calls it before it puts rows ``[0, upto)`` of a
# batch on the wire, with the answers that came back since its last call as plain
# ``(idempotency_key, status, error)`` rows (it runs every few messages: no frames). It
# returns once both are durable, so after a crash only the rows handed off and not
# answered are in doubt; it raises (a StateError) when the sender may no longer send —
# then the gateway hands over nothing more and lets the error through.
Answer = tuple[str, str, str | None]
HandOff = Callable[[int, list[Answer]], None]


class Gateway(Protocol):
    """Sends batches of messages. Each message carries an idempotency key
    (``smsops-<delivery>-<seq>-<message>``); a gateway that can must never send a key
    twice."""

    name: str
    # Where its record of accepted keys lives (host and file, say), or None when it keeps
    # none: a resume asks it only about chunks sent through that same record — another
    # machine's outbox knows nothing of this one's.
    record: str | None

    def send(self, batch: pd.DataFrame, hand_off: HandOff | None = None) -> pd.DataFrame:
        """Send every row of ``batch`` (BATCH_COLUMNS) in order, calling ``hand_off``
        before each group of rows goes out; answer one row per key (RESULT_COLUMNS)."""
        ...

    def accepted_keys(self, delivery_id: int) -> set[str] | None:
        """The keys of ``delivery_id`` this gateway (its :attr:`record`) already accepted,
        or None when it cannot tell (then messages whose outcome was lost in a crash are
        not resent)."""
        ...

    def close(self) -> None: ...


def make_gateway(settings: Settings) -> Gateway:
    """The gateway ``SMSOPS_GATEWAY`` names."""
    if settings.gateway == "outbox":
        from smsops.gateways.outbox import OutboxGateway

        return OutboxGateway(settings.outbox, settings.rate_limit)
    from smsops.gateways.kannel import KannelGateway  # type: ignore[import-not-found]

    return KannelGateway(settings)  # type: ignore[no-any-return]


def idempotency_keys(delivery_id: int, seq: pd.Series, message_no: pd.Series) -> pd.Series:
    """``smsops-<delivery>-<seq>-<message_no>``, indexed like ``seq``. Python strings
    (object dtype), as the gateways hand them on and dispatch looks answers up by them:
    made so at once, a chunk's keys cost a third of Arrow strings converted back (#12)."""
    import pandas as pd

    prefix = f"smsops-{delivery_id}-"
    keys = [f"{prefix}{s}-{m}" for s, m in zip(seq.tolist(), message_no.tolist(), strict=True)]
    return pd.Series(keys, index=seq.index, dtype=object)
