"""Schema versions and the steps between them.

A new database is created from the current tables (schema.py) at the latest version; an
older one is brought forward step by step. Each step is frozen as it was released — it
never reads the current table definitions — and a test checks that migrating from
version 1 ends at the same schema as creating afresh. Never edit a released step:
append a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)

from smsops.domain.vocabulary import ItemError, ItemStatus
from smsops.store.schema import PENDING_ITEM, meta, metadata


def _v1(conn: Connection) -> None:
    """Version 1, as first released."""
    v1 = MetaData()
    ts = DateTime(timezone=True)
    Table(
        "smsops_meta",
        v1,
        Column("key", String(64), primary_key=True),
        Column("value", String(256), nullable=False),
    )
    Table(
        "account",
        v1,
        Column("id", Integer, primary_key=True),
        Column("plan", String(16), nullable=False),
        Column("phone_field_enabled", Boolean, nullable=False),
        Column("timezone", String(64), nullable=False),
        Column("updated_at", ts, nullable=False),
    )
    Table(
        "users",
        v1,
        Column("pos", Integer, primary_key=True, autoincrement=True),
        Column("user_id", String(128), nullable=False, unique=True),
        Column("phone", String(64)),
        Column("attrs", Text),
        Column("updated_at", ts, nullable=False),
    )
    Table(
        "optouts",
        v1,
        Column("phone", String(32), primary_key=True),
        Column("source", String(64), nullable=False),
        Column("created_at", ts, nullable=False),
    )
    Table(
        "deliveries",
        v1,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("kind", String(16), nullable=False),
        Column("status", String(24), nullable=False),
        Column("messages", Text, nullable=False),
        Column("recipients", Integer, nullable=False),
        Column("resend_of", Integer, ForeignKey("deliveries.id")),
        Column("created_at", ts, nullable=False),
        Column("scheduled_at", ts),
        Column("started_at", ts),
        Column("finished_at", ts),
        Column("allocated", Boolean, nullable=False),
        Column("claimed_by", String(128)),
        Column("heartbeat_at", ts),
        Index("ix_deliveries_due", "status", "scheduled_at"),
    )
    Table(
        "delivery_items",
        v1,
        Column("delivery_id", Integer, ForeignKey("deliveries.id"), primary_key=True),
        Column("seq", Integer, primary_key=True),
        Column("message_no", Integer, primary_key=True),
        Column("phone", String(32), nullable=False),
        Column("user_id", String(128)),
        Column("status", String(16), nullable=False),
        Column("error", String(64)),
        Column("ticket", Boolean, nullable=False),
        Column("sent_at", ts),
        Column("gateway_ref", String(64)),
        Index("ix_items_status", "delivery_id", "status", "seq"),
        Index("ix_items_phone", "phone"),
    )
    Table(
        "ledger",
        v1,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", ts, nullable=False),
        Column("kind", String(16), nullable=False),
        Column("amount", Integer, nullable=False),
        Column("delivery_id", Integer, ForeignKey("deliveries.id")),
        Column("note", String(256)),
        Index("ix_ledger_delivery", "delivery_id"),
    )
    v1.create_all(conn)


def _timestamp(conn: Connection) -> str:
    return "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"


def _v2_delivery_reports(conn: Connection) -> None:
    """Version 2: delivery reports per item."""
    conn.execute(text("ALTER TABLE delivery_items ADD COLUMN dlr_status VARCHAR(16)"))
    conn.execute(text(f"ALTER TABLE delivery_items ADD COLUMN dlr_at {_timestamp(conn)}"))


def _v3_parallel_dispatch(conn: Connection) -> None:
    """Version 3: several dispatchers per delivery (item owners, a liveness table); no
    query looks items up by phone; the status index gains message_no."""
    conn.execute(text("ALTER TABLE delivery_items ADD COLUMN owner VARCHAR(128)"))
    conn.execute(
        text(
            "CREATE TABLE dispatchers (owner VARCHAR(128) NOT NULL PRIMARY KEY, "
            "delivery_id INTEGER NOT NULL REFERENCES deliveries (id), "
            f"heartbeat_at {_timestamp(conn)} NOT NULL)"
        )
    )
    conn.execute(text("CREATE INDEX ix_dispatchers_delivery ON dispatchers (delivery_id)"))
    conn.execute(text("DROP INDEX IF EXISTS ix_items_phone"))
    conn.execute(text("DROP INDEX IF EXISTS ix_items_status"))
    conn.execute(
        text(
            "CREATE INDEX ix_items_status ON delivery_items (delivery_id, status, seq, message_no)"
        )
    )


def _v4_no_delivery_claims(conn: Connection) -> None:
    """Version 4: who sends a delivery lives in `dispatchers` only; the delivery's own
    claim columns are gone."""
    conn.execute(text("ALTER TABLE deliveries DROP COLUMN claimed_by"))
    conn.execute(text("ALTER TABLE deliveries DROP COLUMN heartbeat_at"))


def _v5_optouts_read_as_r3(conn: Connection) -> None:
    """Version 5: opt-outs typed in the ``0081-90-…`` form were stored as the 16-digit
    non-number ``+810081…`` and blocked no one; store them as the mobile they name."""
    import pandas as pd  # only here: opening a store must not import pandas

    from smsops.domain.phones import classify_phones  # the reading of R3 at this version

    rows = conn.execute(
        text("SELECT phone FROM optouts WHERE phone LIKE :p"), {"p": "+810081%"}
    ).scalars()
    stored = pd.Series(list(rows), dtype=object)
    if stored.empty:
        return
    read = classify_phones(stored.str[3:])  # the digits as they were typed: 0081…
    known = set(conn.execute(text("SELECT phone FROM optouts")).scalars())
    for old, new, mobile in zip(stored, read["e164"], read["mobile"], strict=True):
        if not mobile:
            continue  # not a mobile either way: it never matched anyone, and still won't
        if new in known:
            conn.execute(text("DELETE FROM optouts WHERE phone = :o"), {"o": old})
        else:
            conn.execute(
                text("UPDATE optouts SET phone = :n WHERE phone = :o"), {"n": new, "o": old}
            )
            known.add(new)


def _v6_hand_off_marks(conn: Connection) -> None:
    """Version 6: each dispatcher records how far into its chunk it has handed messages
    to the gateway, and up to where every answer has come back, so a crash leaves only
    the messages between the two in doubt, never the whole chunk."""
    for column in ("handed_seq", "handed_message_no", "answered_seq", "answered_message_no"):
        conn.execute(text(f"ALTER TABLE dispatchers ADD COLUMN {column} INTEGER"))


def _v7_paused_deliveries(conn: Connection) -> None:
    """Version 7: a delivery whose gateway is down pauses (status ``paused``) with the
    reason shown and the time dispatch-due tries it again."""
    conn.execute(text("ALTER TABLE deliveries ADD COLUMN paused_reason VARCHAR(256)"))
    conn.execute(text(f"ALTER TABLE deliveries ADD COLUMN resume_at {_timestamp(conn)}"))
    conn.execute(text("ALTER TABLE deliveries ADD COLUMN pauses INTEGER NOT NULL DEFAULT 0"))


def _v8_replies(conn: Connection) -> None:
    """Version 8: every reply is kept, with what smsops did with it and why."""
    serial = "SERIAL" if conn.dialect.name == "postgresql" else "INTEGER"
    conn.execute(
        text(
            f"CREATE TABLE replies (id {serial} NOT NULL PRIMARY KEY, "
            f"received_at {_timestamp(conn)} NOT NULL, sender VARCHAR(32) NOT NULL, "
            "text TEXT NOT NULL, action VARCHAR(16) NOT NULL, reason VARCHAR(32))"
        )
    )
    conn.execute(text("CREATE INDEX ix_replies_received ON replies (received_at)"))


def _v9_dlr_reasons(conn: Connection) -> None:
    """Version 9: each delivery report keeps the SMSC's answer (the carrier's state and
    error code), so an undeliverable message says why."""
    conn.execute(text("ALTER TABLE delivery_items ADD COLUMN dlr_reason VARCHAR(64)"))


def _v10_claimed_ranges(conn: Connection) -> None:
    """Version 10: a dispatcher claims a chunk as a range of items on its own row instead
    of marking each item ``sending``. Items a crashed older dispatcher left ``sending``
    are settled here as its resume would have settled them: up to its *answered* mark
    sent, after its *handed* mark pending again, between them (or with no row left to
    tell) ``outcome_unknown`` — never sent twice."""
    for column in ("from_seq", "from_message_no", "to_seq", "to_message_no"):
        conn.execute(text(f"ALTER TABLE dispatchers ADD COLUMN {column} INTEGER"))
    conn.execute(text("ALTER TABLE dispatchers ADD COLUMN gateway_record VARCHAR(512)"))
    now = datetime.now(UTC)
    at = now if conn.dialect.name == "postgresql" else now.replace(tzinfo=None)
    # the statuses as bound values: :sending, :sent, :pending, :error, :unknown
    words = {
        "sending": ItemStatus.SENDING,
        "sent": ItemStatus.SENT,
        "pending": ItemStatus.PENDING,
        "error": ItemStatus.ERROR,
        "unknown": ItemError.OUTCOME_UNKNOWN,
    }
    owners = conn.execute(
        text("SELECT DISTINCT owner FROM delivery_items WHERE status = :sending"), words
    ).scalars()
    for owner in list(owners):
        mark = conn.execute(
            text(
                "SELECT handed_seq, handed_message_no, answered_seq, answered_message_no "
                "FROM dispatchers WHERE owner = :o"
            ),
            {"o": owner},
        ).one_or_none()
        mine = "status = :sending AND owner = :o"
        if mark is not None and mark.answered_seq is not None:
            conn.execute(
                text(
                    f"UPDATE delivery_items SET status = :sent, sent_at = :at, owner = NULL "
                    f"WHERE {mine} AND (seq < :s OR (seq = :s AND message_no <= :m))"
                ),
                {"o": owner, "at": at, "s": mark.answered_seq, "m": mark.answered_message_no}
                | words,
            )
        if mark is not None:
            after = (
                ""
                if mark.handed_seq is None
                else " AND (seq > :s OR (seq = :s AND message_no > :m))"
            )
            conn.execute(
                text(
                    f"UPDATE delivery_items SET status = :pending, owner = NULL WHERE {mine}{after}"
                ),
                {"o": owner, "s": mark.handed_seq, "m": mark.handed_message_no} | words,
            )
    conn.execute(  # the rest: no row left to tell, they may have gone
        text(
            "UPDATE delivery_items SET status = :error, error = :unknown, "
            "sent_at = :at, owner = NULL WHERE status = :sending"
        ),
        {"at": at} | words,
    )


def _v11_account_language(conn: Connection) -> None:
    """Version 11: the account may choose the language its people read (#15); none (NULL):
    the locale's, else English."""
    conn.execute(text("ALTER TABLE account ADD COLUMN language VARCHAR(8)"))


def _v12_drop_folder(conn: Connection) -> None:
    """Version 12: a full member export (``--mode replace``) marks users it no longer
    holds inactive, never deleting them; each file a drop folder imported is recorded by
    its content's hash, so the same content arriving again is skipped (#11)."""
    conn.execute(text("ALTER TABLE users ADD COLUMN active BOOLEAN NOT NULL DEFAULT TRUE"))
    conn.execute(
        text(
            "CREATE TABLE drop_imports (sha256 VARCHAR(64) NOT NULL PRIMARY KEY, "
            "kind VARCHAR(16) NOT NULL, name VARCHAR(512) NOT NULL, row_count INTEGER NOT NULL, "
            f"imported_at {_timestamp(conn)} NOT NULL)"
        )
    )


def _v13_sending_window(conn: Connection) -> None:
    """Version 13: the account's sending window (quiet hours, #11); a delivery created
    outside it on purpose says so, and a paused one says what paused it."""
    conn.execute(text("ALTER TABLE account ADD COLUMN send_window VARCHAR(16)"))
    conn.execute(text("ALTER TABLE deliveries ADD COLUMN paused_for VARCHAR(24)"))
    conn.execute(
        text("ALTER TABLE deliveries ADD COLUMN outside_window BOOLEAN NOT NULL DEFAULT FALSE")
    )


def _v14_pending_items_index(conn: Connection) -> None:
    """Version 14: the index that finds a delivery's next pending items holds only pending
    ones (a partial index): sending an item removes its entry instead of moving it among
    the settled, and creating a delivery writes a shorter one (#12)."""
    conn.execute(text("DROP INDEX IF EXISTS ix_items_status"))
    conn.execute(
        text(
            "CREATE INDEX ix_items_pending ON delivery_items (delivery_id, seq, message_no) "
            f"WHERE {PENDING_ITEM}"
        )
    )


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1,
    _v2_delivery_reports,
    _v3_parallel_dispatch,
    _v4_no_delivery_claims,
    _v5_optouts_read_as_r3,
    _v6_hand_off_marks,
    _v7_paused_deliveries,
    _v8_replies,
    _v9_dlr_reasons,
    _v10_claimed_ranges,
    _v11_account_language,
    _v12_drop_folder,
    _v13_sending_window,
    _v14_pending_items_index,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: Connection) -> int:
    if not inspect(conn).has_table(meta.name):
        return 0
    value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def migrate(conn: Connection) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; return the version it had (0: new)."""
    before = schema_version(conn)
    if before > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {before} is newer than this smsops ({SCHEMA_VERSION})"
        )
    if before == 0:
        metadata.create_all(conn)
    else:
        for step in MIGRATIONS[before:]:
            step(conn)
    if before != SCHEMA_VERSION:
        conn.execute(meta.delete().where(meta.c.key == "schema_version"))
        conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
    return before
