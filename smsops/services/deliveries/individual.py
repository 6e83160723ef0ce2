"""An individual send (R5: never deduplicated): one number, its messages, saved for the
caller to dispatch."""

from __future__ import annotations

from collections.abc import Sequence

from smsops.domain.messages import validate_messages
from smsops.domain.vocabulary import ItemError
from smsops.errors import RuleError
from smsops.services import account as accounts
from smsops.services.context import Context
from smsops.services.deliveries.create import Created, save


def send_individual(
    ctx: Context,
    phone: str,
    messages: Sequence[str],
    *,
    resend_of: int | None = None,
    outside_window: bool = False,
) -> Created:
    """Save an individual send to one number (never deduplicated, R5); R3, R6, R7, R9,
    R16 and the sending window (#11, unless ``outside_window``) apply. The caller
    dispatches it."""
    import pandas as pd

    from smsops.domain.phones import classify_phones, mask_phone
    from smsops.services import people

    acct = accounts.get_account(ctx)
    msgs = validate_messages(messages)
    row = classify_phones(pd.Series([phone], dtype=object)).iloc[0]
    if not row["mobile"]:
        raise RuleError(
            "R3",
            f"{phone!r} is not a Japanese mobile number ({row['reason']}); "
            "SMS goes to 060/070/080/090 numbers only",
            reason=row["reason"],
        )
    e164 = str(row["e164"])
    if e164 in set(people.load_optouts(ctx)):
        raise RuleError(
            "R16",
            f"{mask_phone(e164)} opted out; it must not be sent to",
            reason=ItemError.OPTED_OUT,
        )
    pairs = pd.DataFrame(
        {"seq": 1, "message_no": [m.number for m in msgs], "phone": e164, "user_id": None}
    )
    return save(
        ctx,
        "individual",
        [m.text for m in msgs],
        pairs,
        recipients=1,
        when=None,
        tz=acct.timezone,
        resend_of=resend_of,
        outside_window=outside_window,
    )
