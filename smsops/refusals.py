"""A refusal's line, and the R4 diagnosis, in the reader's language (#15).

Errors are raised with one English line, which ``--json`` documents, Prefect states and
logs keep as it is (programs and engineers read them). What a person reads is rendered
here: the line is matched against the English templates below — each a catalog entry,
its ``{name}`` parts the values — and rebuilt from the template's translation. A line of
several clauses (``head: part, part; note``) is translated clause by clause; a clause no
template knows stays as it is, English, rather than being guessed at.

Numbers in a matched line are written as the reader writes them (``1,550``).
"""

from __future__ import annotations

import re
from functools import cache

from smsops.i18n import N_, _, language, number

# A placeholder with one of these names matches a number (1550 or 1,550) only, so that
# "{n} users have no phone number" cannot swallow the clause before it.
_NUMERIC = frozenset(
    {
        "n",
        "m",
        "needed",
        "balance",
        "shortfall",
        "number",
        "length",
        "limit",
        "count",
        "id",
        "got",
        "picked",
        "of",
    }
)

TEMPLATES: tuple[str, ...] = (
    # R1
    N_("bulk SMS needs the {required} plan or above; this account is on {plan} (plans: {plans})"),
    # R4: the diagnosis (smsops/domain/recipients.py, smsops/services/deliveries.py)
    N_("{n} recipient from {m} user"),
    N_("{n} recipient from {m} users"),
    N_("{n} recipients from {m} user"),
    N_("{n} recipients from {m} users"),
    N_("the user table is empty"),
    N_(
        'the phone field is disabled in the account\'s registration fields ("use" is '
        "unchecked), so no user is a candidate (R2)"
    ),
    N_("{n} user has no phone number"),
    N_("{n} users have no phone number"),
    N_("{n} user has a malformed phone number"),
    N_("{n} users have malformed phone numbers"),
    N_(
        "{n} user has a number that is not a Japanese mobile (landline, toll-free, IP phone, "
        "unallocated or foreign)"
    ),
    N_(
        "{n} users have numbers that are not Japanese mobiles (landline, toll-free, IP phone, "
        "unallocated or foreign)"
    ),
    N_("{n} user opted out"),
    N_("{n} users opted out"),
    N_("{n} user shares a number with an earlier user (sent once)"),
    N_("{n} users share a number with an earlier user (sent once)"),
    N_("{n} user cannot be a candidate"),
    N_("{n} users cannot be candidates"),
    N_("--query {query} picks {picked} of the {of} users"),
    N_("0 recipients"),
    N_("the user file has no rows ({files})"),
    N_("phone numbers read from column {columns}"),
    N_("phone numbers read from columns {columns}"),
    # R6, R7
    N_("a delivery carries 1 or 2 messages, got {got}"),
    N_("message {number} is not valid text (a broken character, e.g. from a wrong encoding)"),
    N_("message {number} is empty"),
    N_(
        "message {number} is {length} characters long; the limit is {limit} (counted as "
        "UTF-16 units: an emoji may count 2)"
    ),
    N_(
        "message {number} contains the substitution tag {tag}; tags are not supported in SMS "
        "and would be sent literally"
    ),
    # R9
    N_(
        "not enough tickets: needed {needed}, balance {balance}, shortfall {shortfall} (buy "
        "more with `smsops tickets add N`)"
    ),
    # R12
    N_("the send time is empty: give one such as 2026-12-01 10:00, or none to send now"),
    N_("cannot read the send time {text}: use ISO 8601 such as 2026-12-01 10:00"),
    N_("the send time {at} is in the past (now {now})"),
    N_("the send time has passed since the preview; preview again"),
    # R13
    N_("a delivery is saved only once confirmed: review `smsops bulk preview`, then add --yes"),
    N_("not confirmed; nothing was saved"),
    # R3, R16
    N_(
        "{phone} is not a Japanese mobile number ({reason}); SMS goes to 060/070/080/090 "
        "numbers only"
    ),
    N_("{phone} opted out; it must not be sent to"),
    # the object asked for, its state
    N_("no delivery {id}"),
    N_("no deliveries yet; nothing to report"),
    N_("delivery {id} is already {status}"),
    N_("delivery {id} is scheduled for later"),
    N_("delivery {id} is being sent by {owner}"),
    N_("delivery {id} is {status}; only a delivery that has not started sending can be cancelled"),
    N_("delivery {id} has no failed messages to resend"),
    N_("delivery {id} has no failed messages to resend to {phone}"),
    N_("{phone} is not on the opt-out list"),
    # tickets
    N_("count must be positive, got {got}"),
)

_RULE = re.compile(r"(R\d+): (.*)", re.DOTALL)


@cache
def _patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    compiled = []
    for template in TEMPLATES:
        parts = re.split(r"\{(\w+)\}", template)
        regex = ""
        for i, part in enumerate(parts):
            if i % 2 == 0:
                regex += re.escape(part)
            else:
                regex += rf"(?P<{part}>\d[\d,]*)" if part in _NUMERIC else rf"(?P<{part}>.+?)"
        compiled.append((re.compile(regex, re.DOTALL), template))
    return tuple(compiled)


def _value(name: str, value: str) -> str:
    if name in _NUMERIC:
        return number(int(value.replace(",", "")))
    return value


def _clause(text: str) -> str | None:
    """``text`` translated if one template matches it whole, else None."""
    for pattern, template in _patterns():
        m = pattern.fullmatch(text)
        if m:
            values = {k: _value(k, v) for k, v in m.groupdict().items()}
            return _(template).format(**values)
    return None


def _translate(text: str) -> str:
    whole = _clause(text)
    if whole is not None:
        return whole
    for sep, joined in (("; ", "。"), (": ", "："), (", ", "、")):
        parts = _split(text, sep)
        if len(parts) > 1:
            return joined.join(_translate(part) for part in parts)
    return text


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` outside parentheses and quotes: "(landline,
    toll-free, …)" and a quoted query stay whole."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        c = text[i]
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"" and (i == 0 or not text[i - 1].isalnum()):  # not "account's"
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    parts.append(text[start:])
    return parts


def localize(text: str) -> str:
    """A refusal's line or a diagnosis in the reader's language; English is returned as
    it is. ``R9: not enough tickets: needed 1550, …`` → ``R9: チケットが足りません…``."""
    if language() == "en":
        return text
    m = _RULE.fullmatch(text)
    if m:
        return f"{m.group(1)}: {_translate(m.group(2))}"
    return _translate(text)
