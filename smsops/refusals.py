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

from smsops.errors import OS_REASONS, InputError, Problem, RuleError, SmsopsError
from smsops.i18n import N_, _, language, ngettext, number
from smsops.logs import mask_text

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
        "row",
        "line",
        "byte",
        "offset",
    }
)
# A placeholder with one of these names holds a clause of its own, translated in turn:
# "{problem} (line {line})" around any problem of a table.
_NESTED = frozenset({"problem", "other", "failed", "detail"})

TEMPLATES: tuple[str, ...] = (
    # R1
    N_("bulk SMS needs the {required} plan or above; this account is on {plan} (plans: {plans})"),
    # R4: the diagnosis (smsops/domain/recipients.py, smsops/services/deliveries/preview.py)
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
    # the sending window (#11)
    N_("the send time {at} is outside the sending window {window} ({tz})"),
    N_("now ({now}) is outside the sending window {window} ({tz})"),
    N_(
        "the next time it could go is {at}: give --at then, or --outside-window to send "
        "outside it on purpose"
    ),
    N_("cannot read the sending window {text}: use HH:MM-HH:MM such as 09:00-20:00, or off"),
    N_("the sending window {text} names a time that does not exist"),
    N_(
        "the sending window {text} is empty or the whole day: start and end must differ "
        "(off: no window)"
    ),
    N_("the sending window {window} ({tz}) closed"),
    N_("{n} messages wait until it opens at {at}"),
    N_(
        "at {rate} messages/s it does not fit in the sending window {window}: it pauses at "
        "{close} and goes on at {opening}"
    ),
    N_("{n} pauses in all"),
    N_("the last message leaves after delivery {id} is due to start ({at})"),
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
    # bad input files (smsops/tables.py): where a problem is, then each problem
    N_("users CSV"),
    N_("{problem} (line {line})"),
    N_("{problem} (in {source}, line {line})"),
    N_("{problem} (in {source})"),
    N_("{problem}, and {other}"),
    N_("found: {names}"),
    N_("no file given"),
    N_("file not found"),
    N_("file is empty"),
    N_("cannot read the file: {detail}"),
    N_("cannot parse the CSV: {detail}"),
    N_("cannot read the header line: {detail}"),
    N_("holds a NUL byte, which no text has (a binary or damaged file?)"),
    N_("unknown encoding {encoding}: use auto, utf-8, cp932 or utf-16"),
    N_("not UTF-16 (broken at byte {byte})"),
    N_(
        "looks like {codec} without a byte order mark, but is broken at byte {byte}; save it "
        "again from Excel as CSV UTF-8"
    ),
    N_("looks like UTF-16 (Excel's Unicode text), not {codec}; pass --encoding utf-16 or auto"),
    N_(
        "not UTF-16 (no byte order mark and no UTF-16 text); pass --encoding auto, which "
        "detects UTF-8 and CP932 too"
    ),
    N_("looks like UTF-8, not CP932; pass --encoding utf-8 or auto"),
    N_(
        "mixes encodings: it reads as UTF-8 up to line {m}, but line {line} is not UTF-8 "
        "(byte {hex} at offset {offset}; CP932/Shift_JIS?); save the whole file again in one "
        "encoding"
    ),
    N_(
        "mixes encodings: it reads as CP932/Shift_JIS from line {line}, but line {m} is "
        "UTF-8; save the whole file again in one encoding"
    ),
    N_("not {failed}; pass the right --encoding (utf-8, cp932 or utf-16)"),
    N_("{failed} nor {other}"),
    N_("{codec} (byte {hex} at offset {offset}, line {line})"),
    N_(
        "file is larger than {size}, the largest file smsops reads at once: split it and "
        "import the parts one by one"
    ),
    N_(
        "file is {size} ({n} bytes); the largest file smsops reads at once is {most}: split "
        "it and import the parts one by one"
    ),
    N_(
        "the files are together {size} ({n} bytes); one import reads at most {most}: import "
        "them in several runs"
    ),
    N_(
        "the header has {n} columns; the most smsops reads is {limit}: delete the columns the "
        "users table does not need"
    ),
    N_("header column {numbers} holds a NUL byte, which no text has (a binary or damaged file?)"),
    N_("header columns {numbers} holds a NUL byte, which no text has (a binary or damaged file?)"),
    N_(
        "header column {numbers} is a name of {n} characters; the longest smsops reads is "
        "{limit} (is the first line a header?)"
    ),
    N_(
        "header columns {numbers} are names of up to {n} characters; the longest smsops reads "
        "is {limit} (is the first line a header?)"
    ),
    N_("the header line has no column names"),
    N_(
        "the header line has no column names, only byte order marks (U+FEFF: one added on "
        "every save?)"
    ),
    N_(
        "the row that starts on line {line} has a quoted cell that is not closed properly "
        "({detail})"
    ),
    N_("is larger than 1 MiB ({n} bytes): a quote left open?"),
    N_("has {n} field, expected {m}"),
    N_("has {n} fields, expected {m}"),
    N_("is longer than {n} characters"),
    N_(
        "phone looks like a number mangled by Excel (scientific notation); format the column "
        "as text and export again"
    ),
    N_("column name appears more than once in the header"),
    N_("required column {name} is missing"),
    N_("is empty (required)"),
    N_("is longer than {n} characters, the longest id the store keeps"),
    N_("repeats the header line (files pasted together?)"),
    N_("{value} repeats row {row} (user_id must be unique)"),
    N_("{value} is already in {source} row {row}"),
    N_("no 'phone' or '電話番号' column, and more than one column"),
    # settings and servers raised as plain English elsewhere (gateways/kannel.py, the store's
    # migrations, flows/): their lines, matched here
    N_(
        "{wanted_by} needs SMSOPS_RECEIVER_TOKEN, the shared secret every callback to smsops "
        "receiver carries (make one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    ),
    N_(
        "SMSOPS_RECEIVER_TOKEN must be 16 to 256 of A-Z a-z 0-9 - _ . ~ (it travels unescaped "
        "in Kannel's callback URLs)"
    ),
    N_("cannot load the Prefect Secret block {name}: {kind}"),
    N_(
        "the kannel gateway needs SMSOPS_KANNEL_USER and SMSOPS_KANNEL_PASSWORD (or "
        "SMSOPS_KANNEL_PASSWORD_BLOCK, a Prefect Secret block)"
    ),
    N_("the DLR URL must not contain '%' (Kannel reads it as an escape)"),
    N_("SMSOPS_KANNEL_URL {url} is not an http(s) URL"),
    N_("SMSOPS_KANNEL_{what} must be ASCII (it travels in a header)"),
    N_("an installation id is 1 to 64 of A-Z a-z 0-9 _ -"),
    N_("database schema version {n} is newer than this smsops ({m})"),
    N_(
        "{folder}: a run watches only the configured drop folder {drops} (SMSOPS_DROPS) or a "
        "folder under the import root"
    ),
    N_("cannot listen on {where}: {detail}"),
    N_("the Prefect server exited; see {path}"),
    N_("the Prefect server did not start in {seconds} s"),
    # the drop folder (smsops/services/drops.py): its refusals and what became of a file
    N_("drop folder {folder}"),
    N_("no folder given"),
    N_("is a file, not a folder"),
    N_("no such folder"),
    N_("cannot be read: {detail}"),
    N_("{mode} is not upsert or replace"),
    N_("still being written ({name} is not whole yet)"),
    N_("still being written (changed since the last look)"),
    N_("still being written (changed just now)"),
    N_("still being written (changed while read)"),
    N_("skipped: the same content as {name} was imported before"),
    N_("{n} row imported"),
    N_("{n} rows imported"),
    N_("{n} users not in this full export are now inactive"),
    N_("{n} number read, {m} added to the opt-out list"),
    N_("{n} numbers read, {m} added to the opt-out list"),
    # output files (smsops/cli/common.py)
    N_("is a folder; give a file name"),
    N_("folder {folder} does not exist"),
    N_("{folder} is not a folder"),
    N_("name the same file; give each its own"),
    N_("cannot write: {detail}"),
)

TEMPLATES += OS_REASONS  # "cannot read the file: Permission denied"

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


_ALL = re.compile(r", … \((\d[\d,]*) in all\)$")


def _value(name: str, value: str) -> str:
    if name in _NUMERIC:
        return number(int(value.replace(",", "")))
    if name in _NESTED:
        return _translate(value)
    if name == "numbers":  # "3, 4 and 7", "3, 4, 7, … (12 in all)" (tables._numbers)
        value = _ALL.sub(lambda m: _("… ({n} in all)").format(n=m.group(1)), value)
        return value.replace(" and ", "、").replace(", ", "、")
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


def human(error: SmsopsError) -> str:
    """The line a person reads for ``error``, in their language (#15): a bad input rebuilt
    from its source and problems; a line raised as a :class:`~smsops.errors.Text` rendered
    from its template (after its rule, for a rule's refusal); any other matched against
    the English templates above. ``error.message`` stays English (``--json``, logs)."""
    if isinstance(error, InputError):
        return mask_text(input_error(error))
    if error.text is None:
        return localize(error.message)
    line = mask_text(error.text.render())
    return f"{error.rule}: {line}" if isinstance(error, RuleError) else line


def localize(text: str) -> str:
    """A refusal's line or a diagnosis in the reader's language; English is returned as
    it is. ``R9: not enough tickets: needed 1550, …`` → ``R9: チケットが足りません…``."""
    if language() == "en":
        return text
    m = _RULE.fullmatch(text)
    if m:
        return f"{m.group(1)}: {_translate(m.group(2))}"
    return _translate(text)


def input_error(error: InputError) -> str:
    """A bad-input refusal (:class:`~smsops.errors.InputError`) in the reader's language,
    rebuilt from its source and problems: ``users.csv：2件の問題：データ行 3、列 'phone'：…``."""
    if language() == "en":
        return error.message
    problems = error.problems

    def text(p: Problem) -> str:
        said = _translate(p.problem)
        return f"{said}（{_translate(p.content)}）" if p.content else said

    source = _translate(error.source)
    if len(problems) == 1 and problems[0].row is None and problems[0].column is None:
        return f"{source}：{text(problems[0])}"
    shown = []
    for p in problems[: error.limit]:
        where = []
        if p.row is not None:
            where.append(_("row {row}").format(row=number(p.row)))
        if p.column is not None:
            where.append(_("column {column}").format(column=repr(p.column)))
        shown.append(f"{'、'.join(where) or _('table')}：{text(p)}")
    count = ngettext("{n} problem", "{n} problems", len(problems)).format(n=number(len(problems)))
    more = len(problems) - error.limit
    rest = _(" (and {n} more)").format(n=number(more)) if more > 0 else ""
    return f"{source}：{count}：{'。'.join(shown)}{rest}"
