"""The account (plan, phone field, time zone, sending window) and its ticket ledger (R1, R9,
R11)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from smsops import clock, i18n
from smsops.domain.windows import Window
from smsops.errors import InputError, PlanError, Problem, ScheduleError, TicketError
from smsops.services.context import Context
from smsops.store import read, write
from smsops.store.schema import account, ledger

PLANS = ("free", "light", "standard", "premium")  # low to high
BULK_PLAN = "standard"
# The most a balance holds. Far above any campaign (two messages to everyone in Japan is
# some 250 million), and it keeps every ledger amount inside the store's integer column
# (32-bit on PostgreSQL) and every sum far from overflowing.
MAX_BALANCE = 1_000_000_000


@dataclass(frozen=True)
class Account:
    plan: str
    phone_field_enabled: bool
    timezone: str
    language: str | None = None  # ja / en: its people's default language (#15); None: none
    window: str | None = None  # the sending window (#11), "09:00-20:00"; None: none

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        for key in ("language", "window"):  # as before #15 and #11: none chosen, none said
            if out[key] is None:
                del out[key]
        return out

    @property
    def sending_window(self) -> Window | None:
        return Window.parse_stored(self.window)


def get_account(ctx: Context, conn: Connection | None = None) -> Account:
    if conn is None:
        with read(ctx.engine) as c:
            return get_account(ctx, c)
    row = conn.execute(select(account).where(account.c.id == 1)).one()
    return Account(
        row.plan, bool(row.phone_field_enabled), row.timezone, row.language, row.send_window
    )


def set_account(
    ctx: Context,
    *,
    plan: str | None = None,
    phone_field: bool | None = None,
    timezone: str | None = None,
    language: str | None = None,
    window: str | None = None,
) -> Account:
    """Change what is given; ``window`` is ``HH:MM-HH:MM`` in the account's zone, or
    ``off`` for none (#11)."""
    values: dict[str, object] = {}
    if window is not None:
        try:
            values["send_window"] = (
                None if window.strip().lower() == "off" else str(Window.parse(window))
            )
        except ValueError as exc:
            raise InputError("--window", [Problem(None, None, str(exc))]) from None
    if language is not None:
        try:
            values["language"] = i18n.parse_language(language)
        except ValueError as exc:
            raise InputError("--language", [Problem(None, None, str(exc))]) from None
    if plan is not None:
        if plan not in PLANS:
            raise InputError(
                "--plan",
                [Problem(None, None, f"unknown plan {plan!r}; plans are {', '.join(PLANS)}")],
            )
        values["plan"] = plan
    if phone_field is not None:
        values["phone_field_enabled"] = phone_field
    if timezone is not None:
        clock.zone(timezone)
        values["timezone"] = timezone
    with write(ctx.engine) as conn:
        if values:
            conn.execute(
                account.update().where(account.c.id == 1).values(updated_at=clock.now(), **values)
            )
        return get_account(ctx, conn)


def bulk_allowed(plan: str) -> bool:
    """R1: may an account on ``plan`` send bulk SMS (Standard or above)?"""
    return PLANS.index(plan) >= PLANS.index(BULK_PLAN)


def require_bulk_plan(acct: Account) -> None:
    """R1: bulk SMS needs the Standard plan or above."""
    if not bulk_allowed(acct.plan):
        raise PlanError(
            "R1",
            f"bulk SMS needs the {BULK_PLAN} plan or above; this account is on {acct.plan} "
            f"(plans: {', '.join(PLANS)})",
            plan=acct.plan,
            required=BULK_PLAN,
        )


def require_window(acct: Account, when: datetime | None, now: datetime) -> None:
    """#11: a delivery scheduled outside the account's sending window, or sent now while
    it is shut, is refused with the next time it could go (R12's way of refusing a time)."""
    window, tz = acct.sending_window, acct.timezone
    moment = when or now
    if window is None or window.contains(moment, tz):
        return
    shown = (
        f"the send time {clock.local_iso(when, tz)}"
        if when is not None
        else f"now ({clock.local_iso(now, tz)})"
    )
    opening = clock.local_iso(window.next_opening(moment, tz), tz)
    raise ScheduleError(
        "R12",
        f"{shown} is outside the sending window {window} ({tz}); the next time it could go "
        f"is {opening}: give --at then, or --outside-window to send outside it on purpose",
        window=str(window),
        next_opening=opening,
    )


def balance(ctx: Context, conn: Connection | None = None) -> int:
    """R11: the balance is the sum of the ledger."""
    if conn is None:
        with read(ctx.engine) as c:
            return balance(ctx, c)
    return int(conn.execute(select(func.coalesce(func.sum(ledger.c.amount), 0))).scalar_one())


def add_tickets(ctx: Context, count: int, note: str | None = None) -> int:
    """Buy tickets (a purchase in the ledger); returns the new balance, which may not pass
    :data:`MAX_BALANCE`."""
    if count <= 0:
        raise InputError(
            "tickets add", [Problem(None, None, f"count must be positive, got {count}")]
        )
    with write(ctx.engine) as conn:
        current = lock_balance(conn)
        if count > MAX_BALANCE - current:
            raise InputError(
                "tickets add",
                [
                    Problem(
                        None,
                        None,
                        f"a balance holds at most {MAX_BALANCE:,} tickets; adding {count:,} "
                        f"to the {current:,} there would pass it",
                    )
                ],
            )
        conn.execute(
            ledger.insert().values(at=clock.now(), kind="purchase", amount=count, note=note)
        )
        return balance(ctx, conn)


def lock_balance(conn: Connection) -> int:
    """Lock the account row (PostgreSQL: FOR UPDATE; SQLite holds the write lock already)
    and return the balance, for a debit that must never overdraw (R11)."""
    conn.execute(select(account.c.id).where(account.c.id == 1).with_for_update()).one()
    return int(conn.execute(select(func.coalesce(func.sum(ledger.c.amount), 0))).scalar_one())


def check_tickets(needed: int, available: int) -> None:
    """R9: refuse when the balance is below what a delivery needs."""
    if available < needed:
        raise TicketError(
            "R9",
            f"not enough tickets: needed {needed}, balance {available}, shortfall "
            f"{needed - available} (buy more with `smsops tickets add N`)",
            needed=needed,
            balance=available,
            shortfall=needed - available,
        )
