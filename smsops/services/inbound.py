"""What the network reports back: delivery reports (DLRs) recorded per message, and
replies — one that asks to stop puts the sender on the opt-out list (R16)."""

from __future__ import annotations

import re
import unicodedata
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import IntegrityError

from smsops import clock
from smsops.domain.vocabulary import DlrStatus, ReplyAction
from smsops.errors import InputError, NotFoundError, Problem, ReportRefused, SmsopsError
from smsops.logs import mask_text
from smsops.services.context import Context
from smsops.store import read, schema, write
from smsops.store.bulk import execute_many
from smsops.store.schema import items, replies

# pandas, phone classification and the user tables are imported where they are used: the
# history views read this module's vocabulary and must start fast (#12).
if TYPE_CHECKING:
    import pandas as pd

# Kannel's DLR types (the %d of a dlr-url) and what history calls them.
DLR_STATUSES = {
    1: DlrStatus.DELIVERED,
    2: DlrStatus.UNDELIVERABLE,
    4: DlrStatus.BUFFERED,
    8: DlrStatus.SMSC_ACCEPTED,
    16: DlrStatus.SMSC_REJECTED,
}
_KNOWN_BITS = sum(DLR_STATUSES)
FINAL_DLR = frozenset({DlrStatus.DELIVERED, DlrStatus.UNDELIVERABLE, DlrStatus.SMSC_REJECTED})
# A final negative report: the pair is an error in every view and a resend repairs it
# (R14, R15). Its ticket is not refunded: the SMSC took the message, so it was spent.
FAILED_DLR = frozenset({DlrStatus.UNDELIVERABLE, DlrStatus.SMSC_REJECTED})
# The network has the message: an ``outcome_unknown`` pair was sent after all.
SETTLING_DLR = frozenset({DlrStatus.DELIVERED, DlrStatus.SMSC_ACCEPTED})
_KEY = re.compile(r"smsops-(\d+)-(\d+)-(\d+)")
# An SMPP delivery receipt (``id:… sub:001 dlvrd:000 submit date:… done date:… stat:UNDELIV
# err:001 text:…``): its state and error code are the carrier's reason; its ``text:`` (the
# message's first characters) and the rest are not kept.
_RECEIPT_FIELD = re.compile(r"\b(stat|err):(\S+)", re.IGNORECASE)
_REASON_WIDTH = 64  # delivery_items.dlr_reason is VARCHAR(64)


@dataclass(frozen=True)
class DlrResult:
    key: str
    dlr_status: str  # what the item now shows
    recorded: bool  # False: nothing changed (a repeat, an older or an interim report)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def dlr_status(code: int) -> str:
    """Kannel's report type → ``delivered`` | ``undeliverable`` | ``buffered`` |
    ``smsc_accepted`` | ``smsc_rejected``; a final bit wins if several are set. A type
    with a bit smsops does not know (or none, or a negative one) is refused."""
    if code <= 0 or code & ~_KNOWN_BITS:
        raise InputError("dlr", [Problem(None, "status", f"unknown report type {code!r}")])
    for bit in (1, 2, 16, 4, 8):
        if code & bit:
            return DLR_STATUSES[bit]
    raise AssertionError("unreachable")  # pragma: no cover


def carrier_reason(reply: str | None) -> str | None:
    """The SMSC's answer with a report (Kannel's ``%A``), as kept with it: an SMPP
    receipt's state and error code, or any other answer on one line; cut to 64
    characters, None when there is none.

    >>> carrier_reason("id:7 sub:001 dlvrd:000 submit date:2612010100 stat:UNDELIV err:001 text:冬")
    'stat:UNDELIV err:001'
    >>> carrier_reason("NACK/0x00000045/Submit failed")
    'NACK/0x00000045/Submit failed'
    """
    if not reply:
        return None
    fields = {k.lower(): v for k, v in _RECEIPT_FIELD.findall(reply)}
    if fields:
        text = " ".join(f"{k}:{fields[k]}" for k in ("stat", "err") if k in fields)
    else:
        text = " ".join(reply.split())
    return text[:_REASON_WIDTH] or None


def installation_id(ctx: Context) -> str:
    """This installation's id (made on first use), which its delivery reports carry."""
    with write(ctx.engine) as conn:
        return schema.installation_id(conn)


# An installation's id never changes once made: read once per database, not per batch of
# reports (a round trip each on PostgreSQL).
_INSTALLATIONS: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def _installation(conn: Connection) -> str:
    known = _INSTALLATIONS.get(conn.engine)
    if known is None:
        known = conn.execute(
            select(schema.meta.c.value).where(schema.meta.c.key == schema.INSTALLATION_KEY)
        ).scalar()
        if known is None:  # made in this transaction: remembered once it has committed
            return schema.installation_id(conn)
        _INSTALLATIONS[conn.engine] = known
    return known


def _replaces(current: str | None, current_at: datetime | None, new: str, at: datetime) -> bool:
    """Does a report of ``new`` at ``at`` replace what the message shows? Never a final
    state by an interim one, nor any state by an older report; a final state replaces an
    interim one whenever it comes."""
    if current is None:
        return True
    if current == new:
        return False  # a repeat (Kannel retrying, an SMSC reporting twice): even its time
    if current in FINAL_DLR and new not in FINAL_DLR:
        return False
    if new in FINAL_DLR and current not in FINAL_DLR:
        return True
    before = clock.from_store(current_at)
    return before is None or (at > before if current in FINAL_DLR else at >= before)


@dataclass(frozen=True)
class DlrReport:
    """One delivery report as Kannel's dlr-url brings it, checked (:func:`parse_dlr`)."""

    key: str  # smsops-<delivery>-<seq>-<message_no>
    delivery_id: int
    seq: int
    message_no: int
    status: str  # delivered | undeliverable | buffered | smsc_accepted | smsc_rejected
    at: datetime
    ref: str | None = None
    installation: str | None = None
    reason: str | None = None


def parse_dlr(
    key: str,
    status_code: int,
    *,
    at: datetime | None = None,
    ref: str | None = None,
    installation: str | None = None,
    reason: str | None = None,
) -> DlrReport:
    """A report's fields, checked before anything is read: refused (:class:`InputError`)
    for a key or a report type smsops does not know. ``at`` defaults to now."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise InputError("dlr", [Problem(None, "key", f"{key!r} is not an smsops message key")])
    status = dlr_status(status_code)
    delivery_id, seq, message_no = (int(g) for g in match.groups())
    return DlrReport(
        key, delivery_id, seq, message_no, status, at or clock.now(), ref, installation, reason
    )


def record_dlr(
    ctx: Context,
    key: str,
    status_code: int,
    *,
    at: datetime | None = None,
    ref: str | None = None,
    installation: str | None = None,
    reason: str | None = None,
) -> DlrResult:
    """Record a delivery report on the message with idempotency key ``key``
    (``smsops-<delivery>-<seq>-<message_no>``). Reports may come before dispatch has
    recorded the send, and in any order: a final state is never replaced by an interim
    one (``buffered`` after ``delivered``) nor by an older one (compared by ``at``). A
    report of the state the message already shows changes nothing — not even its time:
    Kannel repeats a callback whose answer it lost, and an SMSC may send a report twice.

    Refused (:class:`ReportRefused`): a report for another ``installation`` (the id its
    dlr-url carries), or whose ``ref`` is not the SMSC id already recorded for the
    message. Refused (:class:`InputError`): a key or a report type smsops does not know.

    ``reason`` is the SMSC's answer with the report (Kannel's ``%A``): kept with the state
    it came with (see :func:`carrier_reason`), replaced only when the state is."""
    report = parse_dlr(key, status_code, at=at, ref=ref, installation=installation, reason=reason)
    (outcome,) = record_dlrs(ctx, [report])
    if isinstance(outcome, SmsopsError):
        raise outcome
    return outcome


def record_dlrs(ctx: Context, reports: Sequence[DlrReport]) -> list[DlrResult | SmsopsError]:
    """Record many reports in one transaction, in order, each as :func:`record_dlr` does
    (the same message twice in one batch: the second sees the first). The answer for each
    is its :class:`DlrResult`, or the refusal (:class:`ReportRefused`,
    :class:`NotFoundError`) that left it unrecorded; the others are recorded all the
    same. A store error raises and records none of them (the transaction is rolled back).

    One read of the messages and one statement for the changes, whatever the batch's size:
    this is how the receiver keeps up with Kannel (#12)."""
    if not reports:
        return []
    seqs: dict[int, set[int]] = {}
    for r in reports:
        seqs.setdefault(r.delivery_id, set()).add(r.seq)
    outcomes: list[DlrResult | SmsopsError] = []
    changes: dict[tuple[int, int, int], tuple[object, ...]] = {}
    with write(ctx.engine) as conn:
        ours = _installation(conn) if any(r.installation for r in reports) else None
        # (status, at, ref) of each message, as this batch leaves it so far
        state: dict[tuple[int, int, int], tuple[str | None, datetime | None, str | None]] = {
            (d, s, m): (status, at, ref)
            for delivery_id, wanted in sorted(seqs.items())
            for d, s, m, status, at, ref in conn.execute(
                _DLR_STATE, {"d": delivery_id, "seqs": sorted(wanted)}
            )
        }
        for r in reports:
            this = (r.delivery_id, r.seq, r.message_no)
            if r.installation is not None and r.installation != ours:
                outcomes.append(
                    ReportRefused(
                        f"report {r.key} is for another installation ({r.installation[:40]})"
                    )
                )
                continue
            if this not in state:
                outcomes.append(NotFoundError(f"no message {r.key}"))
                continue
            status, status_at, gateway_ref = state[this]
            if status == r.status:  # a repeat changes nothing, whatever it names
                outcomes.append(DlrResult(r.key, r.status, False))
                continue
            ref = r.ref[:64] if r.ref else None
            if ref and gateway_ref and ref != gateway_ref:
                outcomes.append(
                    ReportRefused(f"report {r.key} names another message (ref {ref!r})")
                )
                continue
            if not _replaces(status, status_at, r.status, r.at):
                outcomes.append(DlrResult(r.key, str(status), False))
                continue
            state[this] = (r.status, r.at, gateway_ref or ref)
            changes[this] = (r.status, r.at, carrier_reason(r.reason), ref, *this)
            outcomes.append(DlrResult(r.key, r.status, True))
        # a ref dispatch records meanwhile (PostgreSQL) is kept
        execute_many(
            conn,
            "UPDATE delivery_items SET dlr_status = ?, dlr_at = ?, dlr_reason = ?, "
            "gateway_ref = COALESCE(gateway_ref, ?) "
            "WHERE delivery_id = ? AND seq = ? AND message_no = ?",
            list(changes.values()),
        )
    return outcomes


# One delivery's messages among some seqs: the primary key's index (SQLite scans the whole
# table for a row-value IN of (delivery_id, seq, message_no)). Built once, so each batch
# reuses its compiled form (#12: the receiver is CPU-bound).
_DLR_STATE = select(
    items.c.delivery_id,
    items.c.seq,
    items.c.message_no,
    items.c.dlr_status,
    items.c.dlr_at,
    items.c.gateway_ref,
).where(items.c.delivery_id == bindparam("d"), items.c.seq.in_(bindparam("seqs", expanding=True)))


# --- replies (R16) -------------------------------------------------------------------
# Japan's Act on Specified Electronic Mail requires honouring any notice of refusal and
# prescribes no keyword: a reply is read generously. One that is plainly a refusal, in
# the forms people write, opts the sender out; one that only may be (a negation, a
# question, a refusal word inside other words) is kept for a person to review. Every
# reply is stored, whatever smsops did with it.

# why: stop_request | already_opted_out (opted out) · negated | question | mentions_stop
# (review) · not_a_stop_request | not_a_phone | empty (ignored)
ReplyReason = Literal[
    "stop_request",
    "already_opted_out",
    "negated",
    "question",
    "mentions_stop",
    "not_a_stop_request",
    "not_a_phone",
    "empty",
]

# Words that refuse on their own (after NFKC and casefold: ｽﾄｯﾌﾟ is ストップ, ＳＴＯＰ stop).
_JA_TERMS = "停止|中止|ストップ|すとっぷ|ていし|解除|かいじょ|拒否|きょひ|お断り|不要|退会|登録解除"
# "don't send" and friends: a refusal in verb form.
_JA_VERBS = (
    "送らないで|送信しないで|配信しないで|連絡しないで|送ってこないで|メールしないで"
    "|いらない|いりません|要らない|要りません|やめて|止めて|とめて"
)
_JA_OBJECT = "(?:配信|送信|受信|メール|メッセージ|ショートメール|ショートメッセージ|sms|連絡)"
_JA_LEAD = (
    "(?:すみません|すいません|恐れ入りますが|お手数ですが|申し訳ありませんが|申し訳ないですが"
    "|でも|なので|ですので|もう|今後は?|以後|以降|今すぐ|すぐに?|至急|全て|すべて|"
    + _JA_OBJECT
    + "(?:の|を|は)?)*"
)
_JA_POLITE = (
    "(?:(?:を|で|は)?(?:お願い(?:します|致します|いたします|したいです)?|おねがい(?:します)?"
    "|希望(?:します|です)?)"
    "|し(?:て(?:ください|下さい|くださいませ|くれ|ほしい|欲しい|もらえますか|もらえませんか"
    "|いただけますか|いただけませんか|頂けますか|頂けませんか|くれますか|くれませんか)?"
    "|ます|たい|たいです)"
    "|です|ください|下さい|ね|よ|で|を)*"
)
_JA_REFUSAL = re.compile(
    f"{_JA_LEAD}(?:{_JA_OBJECT}?(?:の|を)?(?:{_JA_TERMS})|{_JA_VERBS}){_JA_POLITE}"
)
_JA_MENTION = re.compile(f"{_JA_TERMS}|{_JA_VERBS}")
# a refusal word followed by a negation: 停止しないで, 解除しません, 停止は不要
_JA_NEGATED = re.compile(
    f"(?:{_JA_TERMS})(?:を|は)?(?:しないで|しない|しません|しなくて|じゃない|ではない|不要|やめて)"
)
_JA_REQUEST = re.compile("(?:ますか|ませんか)$")  # 停止していただけますか: a request
_EN_REFUSAL = frozenset({"stop", "unsubscribe", "unsub", "optout", "stopall", "quit", "cancel"})
_EN_FILLER = frozenset(
    {
        "please",
        "pls",
        "plz",
        "now",
        "all",
        "me",
        "sms",
        "texts",
        "text",
        "messages",
        "message",
        "sending",
        "thanks",
        "thank",
        "you",
        "opt",
        "out",
        "the",
    }
)
_EN_NEGATION = frozenset({"not", "don't", "dont", "never", "no"})
_SENTENCES = re.compile(r"[。.!\n]+")
_QUESTION = re.compile("(?:か|の|かな|かしら|っけ)$")


@dataclass(frozen=True)
class ReplyResult:
    action: ReplyAction
    phone: str | None = None  # the sender in E.164, when it is a phone number
    reason: ReplyReason | None = None  # why
    reply_id: int | None = None  # its row in the replies table

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _compact(sentence: str) -> str:
    """A sentence without blanks, punctuation, symbols or brackets: 「停止」 → 停止."""
    return "".join(c for c in sentence if unicodedata.category(c)[0] not in "PZSC")


def classify_reply(text: str) -> tuple[ReplyAction, ReplyReason]:
    """What a reply asks, read generously (R16): ``("opted_out", "stop_request")`` for a
    refusal in the forms people write, ``("review", why)`` for one that only may be, and
    ``("ignored", "not_a_stop_request" | "empty")`` for the rest. The action is what
    :func:`handle_reply` does when the sender is a phone number.

    >>> [str(classify_reply(t)[0]) for t in ("ｽﾄｯﾌﾟ", "配信を停止してください", "停止しないで")]
    ['opted_out', 'opted_out', 'review']
    """
    folded = unicodedata.normalize("NFKC", text).casefold().strip()
    if not _compact(folded):
        return ReplyAction.IGNORED, "empty"
    mentions = negated = question = False
    for raw in _SENTENCES.split(folded):
        sentence = raw.strip()
        compact = _compact(sentence)
        if not compact:
            continue
        asks = "?" in sentence or bool(_QUESTION.search(compact))
        words = re.findall(r"[a-z']+", sentence)
        en = any(w in _EN_REFUSAL or w.startswith(("stop", "unsub")) for w in words) or {
            "opt",
            "out",
        } <= set(words)
        ja = bool(_JA_MENTION.search(compact))
        if not (en or ja):
            continue
        mentions = True
        if (ja and _JA_NEGATED.search(compact)) or (en and _EN_NEGATION & set(words)):
            negated = True
            continue
        request = bool(_JA_REQUEST.search(compact))  # 停止していただけますか: not a question
        if ja and (request or not asks) and _JA_REFUSAL.fullmatch(compact):
            return ReplyAction.OPTED_OUT, "stop_request"
        said = set(words)
        if (
            en
            and not ja
            and not asks
            and said <= _EN_REFUSAL | _EN_FILLER
            and (bool(_EN_REFUSAL & said) or {"opt", "out"} <= said)
        ):
            return ReplyAction.OPTED_OUT, "stop_request"
        question = question or asks
    if negated:
        return ReplyAction.REVIEW, "negated"
    if question:
        return ReplyAction.REVIEW, "question"
    if mentions:
        return ReplyAction.REVIEW, "mentions_stop"
    return ReplyAction.IGNORED, "not_a_stop_request"


def is_stop_request(text: str) -> bool:
    """Is a reply plainly a request to stop (see :func:`classify_reply`)?

    >>> [is_stop_request(t) for t in ("　ＳＴＯＰ　", "配信停止。", "停止しないで")]
    [True, True, False]
    """
    return classify_reply(text)[0] == ReplyAction.OPTED_OUT


def handle_reply(ctx: Context, sender: str, text: str) -> ReplyResult:
    """A reply from ``sender``, stored with what was done with it: a refusal adds the
    sender to the opt-out list (R16, source ``reply``), so every later send skips it; one
    that only may be a refusal is kept for review; any other is ignored. The same reply
    twice, even at the same moment, lists the sender once."""
    from smsops.services import people

    action, reason = classify_reply(text)
    phone: str | None = None
    if action == ReplyAction.OPTED_OUT:
        try:
            try:
                added = people.optout_add(ctx, sender, source="reply")
            except IntegrityError:
                # The same number went on the list between our look and our insert (Kannel
                # retrying a reply whose first try is still running; PostgreSQL — SQLite
                # writes one at a time): it is listed, which is all this reply asks.
                added = people.optout_add(ctx, sender, source="reply")
            phone = added.phone
            reason = "stop_request" if added.added else "already_opted_out"
        except InputError:
            action, reason = ReplyAction.IGNORED, "not_a_phone"
    if phone is None:
        phone = _e164_or_none(sender)
    with write(ctx.engine) as conn:
        reply_id = conn.execute(  # type: ignore[index]
            replies.insert().values(
                received_at=clock.now(),
                sender=(phone or sender)[:32],
                text=text,
                action=action,
                reason=reason,
            )
        ).inserted_primary_key[0]
    return ReplyResult(action, phone, reason, int(reply_id))


def _e164_or_none(sender: str) -> str | None:
    import pandas as pd

    from smsops.domain.phones import classify_phones

    read = classify_phones(pd.Series([sender], dtype=object)).iloc[0]
    return None if pd.isna(read["e164"]) else str(read["e164"])


@dataclass(frozen=True)
class Reply:
    """One stored reply, as ``smsops replies list`` shows it."""

    id: int
    received_at: str | None  # ISO 8601 in the account's zone
    sender: str  # masked (090-****-5678) unless asked otherwise
    text: str
    action: str
    reason: str | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def list_replies(
    ctx: Context,
    *,
    action: str | None = None,
    limit: int | None = None,
    unmasked: bool = False,
) -> list[Reply]:
    """Every reply received, newest first (``action``: only those opted_out, review or
    ignored); senders masked unless ``unmasked``."""
    from smsops.services import account as accounts  # the account's zone, at the edge

    tz = accounts.get_account(ctx).timezone
    stmt = select(replies).order_by(replies.c.received_at.desc(), replies.c.id.desc())
    if action is not None:
        stmt = stmt.where(replies.c.action == action)
    if limit:
        stmt = stmt.limit(limit)
    with read(ctx.engine) as conn:
        rows = conn.execute(stmt).all()
    return [
        Reply(
            r.id,
            clock.local_iso(r.received_at, tz),
            r.sender if unmasked else _mask_sender(r.sender),
            r.text if unmasked else mask_text(r.text),
            r.action,
            r.reason,
        )
        for r in rows
    ]


def replies_frame(ctx: Context, *, action: str | None = None) -> pd.DataFrame:
    """The replies as a frame (masked senders), for the report notebook or an artifact."""
    import pandas as pd

    rows = [r.to_dict() for r in list_replies(ctx, action=action)]
    return pd.DataFrame(rows, columns=["id", "received_at", "sender", "text", "action", "reason"])


def _mask_sender(sender: str) -> str:
    from smsops.domain.phones import mask_phone

    return mask_phone(sender) if sender.startswith("+") else sender
