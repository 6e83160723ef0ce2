"""The tables as smsops uses them now (SQLAlchemy Core). How older databases get here:
migrations.py."""

from __future__ import annotations

import uuid

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    func,
    select,
    text,
    true,
)
from sqlalchemy import (
    DateTime as _DateTime,
)

from smsops.domain.vocabulary import ItemStatus

metadata = MetaData()

# SQL: an item not settled yet, as the partial index ``ix_items_pending`` is defined; a
# query that says it in these words (a literal, not a bound value) can use that index
PENDING_ITEM = f"status = '{ItemStatus.PENDING.value}'"


# Aware timestamps (PostgreSQL ``timestamptz``): smsops always writes UTC, and the
# server's session time zone can never shift them.
DateTime = _DateTime(timezone=True)

meta = Table(
    "smsops_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

account = Table(
    "account",
    metadata,
    Column("id", Integer, primary_key=True),  # one account per installation: id 1
    Column("plan", String(16), nullable=False),
    Column("phone_field_enabled", Boolean, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("language", String(8)),  # ja / en: the default of its people (#15); NULL: none
    # the sending window (#11), "09:00-20:00" in the account's zone; NULL: none (v13)
    Column("send_window", String(16)),
)

users = Table(
    "users",
    metadata,
    Column("pos", Integer, primary_key=True, autoincrement=True),  # registration order
    Column("user_id", String(128), nullable=False, unique=True),
    Column("phone", String(64)),  # as the user table had it; classified when selected
    Column("attrs", Text),  # the other columns of the user table, one JSON object
    Column("updated_at", DateTime, nullable=False),
    # False: missing from the latest full export (`users watch --mode replace`, version
    # 12); kept for history, never selected for a send (#11)
    Column("active", Boolean, nullable=False, default=True, server_default=true()),
)

optouts = Table(
    "optouts",
    metadata,
    Column("phone", String(32), primary_key=True),  # E.164
    Column("source", String(64), nullable=False),  # import, cli, reply…
    Column("created_at", DateTime, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # bulk | individual | resend
    Column("status", String(24), nullable=False),
    Column("messages", Text, nullable=False),  # JSON list of the texts, message_no = index+1
    Column("recipients", Integer, nullable=False),
    Column("resend_of", Integer, ForeignKey("deliveries.id")),
    Column("created_at", DateTime, nullable=False),
    Column("scheduled_at", DateTime),  # UTC; None = immediate
    Column("started_at", DateTime),
    Column("finished_at", DateTime),
    Column("allocated", Boolean, nullable=False, default=False),  # R10 done at send time
    # status `paused` (the gateway was down): why, and when dispatch-due tries again
    Column("paused_reason", String(256)),
    Column("resume_at", DateTime),
    Column("pauses", Integer, nullable=False, default=0, server_default="0"),  # in a row
    # what paused it (PauseReason: the gateway, or the sending window closing) (v13)
    Column("paused_for", String(24)),
    # created on purpose outside the sending window (#11): it never pauses for it (v13)
    Column("outside_window", Boolean, nullable=False, default=False, server_default=false()),
    Index("ix_deliveries_due", "status", "scheduled_at"),
)

items = Table(
    "delivery_items",
    metadata,
    Column("delivery_id", Integer, ForeignKey("deliveries.id"), primary_key=True),
    Column("seq", Integer, primary_key=True),  # recipient order in the delivery
    Column("message_no", Integer, primary_key=True),
    Column("phone", String(32), nullable=False),  # E.164
    Column("user_id", String(128)),
    # pending | sent | error | cancelled. A pending item inside a dispatcher's claimed
    # range (see `dispatchers`) is being sent. ("sending" was written up to version 9
    # and reads as pending outside the store.)
    Column("status", String(16), nullable=False),
    Column("error", String(64)),
    Column("ticket", Boolean, nullable=False, default=False),  # a ticket was debited for it
    Column("sent_at", DateTime),
    Column("gateway_ref", String(64)),
    # delivery report from the network (schema version 2): delivered | undeliverable | …
    Column("dlr_status", String(16)),
    Column("dlr_at", DateTime),
    # the SMSC's answer with that report (Kannel's %A; version 9): ``stat:UNDELIV err:001``
    Column("dlr_reason", String(64)),
    # the dispatcher that handed it to the gateway while it was `sending` (versions 3-9;
    # claims are ranges on `dispatchers` since version 10, and this is no longer written)
    Column("owner", String(128)),
    # serves "the next pending pairs in order" without rescanning sent ones; partial
    # (version 14): a settled item leaves it and enters no other entry, and no query looks
    # items up by another status
    Index(
        "ix_items_pending",
        "delivery_id",
        "seq",
        "message_no",
        sqlite_where=text(PENDING_ITEM),
        postgresql_where=text(PENDING_ITEM),
    ),
)

# Processes sending deliveries (version 3): several may work on one delivery, each
# claiming chunks; a row shows life, and a crashed one's chunks are settled by others.
# A chunk is a range of (seq, message_no) claimed on the row (version 10), so taking
# one writes no item: its pending items are the dispatcher's until the row lets go.
dispatchers = Table(
    "dispatchers",
    metadata,
    Column("owner", String(128), primary_key=True),  # host:pid:start
    Column("delivery_id", Integer, ForeignKey("deliveries.id"), nullable=False),
    Column("heartbeat_at", DateTime, nullable=False),
    # the last (seq, message_no) of its current chunk it may have put on the wire, and
    # the last up to which every answer came back (failures recorded on the items): after
    # a crash its items up to `answered` were sent, those after `handed` never left, and
    # only those between are in doubt
    Column("handed_seq", Integer),
    Column("handed_message_no", Integer),
    Column("answered_seq", Integer),
    Column("answered_message_no", Integer),
    # the chunk it has claimed: its pending items from (from_seq, from_message_no) to
    # (to_seq, to_message_no), both included; none between chunks (version 10)
    Column("from_seq", Integer),
    Column("from_message_no", Integer),
    Column("to_seq", Integer),
    Column("to_message_no", Integer),
    # the gateway's record of accepted keys it sends that chunk through (its host and
    # outbox file; none for Kannel): a resume trusts only the same record (version 10)
    Column("gateway_record", String(512)),
    Index("ix_dispatchers_delivery", "delivery_id"),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("kind", String(16), nullable=False),  # purchase | debit | refund
    Column("amount", Integer, nullable=False),  # + purchase/refund, - debit
    Column("delivery_id", Integer, ForeignKey("deliveries.id")),
    Column("note", String(256)),
    Index("ix_ledger_delivery", "delivery_id"),
)


# Every reply received (version 8), whatever smsops did with it (R16): a notice of
# refusal must be honoured in whatever words it comes, so none is dropped unseen.
replies = Table(
    "replies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", DateTime, nullable=False),
    Column("sender", String(32), nullable=False),  # E.164 when a phone number, else as sent
    Column("text", Text, nullable=False),
    Column("action", String(16), nullable=False),  # opted_out | review | ignored
    Column("reason", String(32)),  # why (inbound.ReplyReason)
    Index("ix_replies_received", "received_at"),
)


# Each file a drop folder imported (version 12), by the SHA-256 of its bytes: the same
# content arriving again, or a file whose import committed just before a crash left it
# in the inbox, is skipped rather than imported twice (#11).
drop_imports = Table(
    "drop_imports",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # users | optouts
    Column("name", String(512), nullable=False),  # the file's name in the inbox
    Column("row_count", Integer, nullable=False),
    Column("imported_at", DateTime, nullable=False),
)


# Each step takes the database from version i to i+1. Version 1 is the tables above as
# first released; later steps alter them (ALTER TABLE …) so existing databases keep
# their data. Never edit a released step: append a new one.
def ensure_account(conn: Connection, now: object) -> None:
    if conn.execute(select(func.count()).select_from(account)).scalar() == 0:
        conn.execute(
            account.insert().values(
                id=1,
                plan="standard",
                phone_field_enabled=True,
                timezone="Asia/Tokyo",
                updated_at=now,
            )
        )


INSTALLATION_KEY = "installation_id"


def installation_id(conn: Connection) -> str:
    """This database's installation id (``smsops_meta``), made on first use: delivery
    reports carry it, so two databases behind one receiver never take each other's."""
    stmt = select(meta.c.value).where(meta.c.key == INSTALLATION_KEY)
    value = conn.execute(stmt).scalar()
    if value is None:
        value = uuid.uuid4().hex
        conn.execute(meta.insert().values(key=INSTALLATION_KEY, value=value))
    return str(value)


__all__ = [
    "account",
    "deliveries",
    "dispatchers",
    "drop_imports",
    "items",
    "ledger",
    "meta",
    "metadata",
    "optouts",
    "replies",
    "users",
]
