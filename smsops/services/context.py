"""What every service needs: the settings, the store, and a way to reach the gateway."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from sqlalchemy import Engine

from smsops import clock as clocks
from smsops import store
from smsops.gateways import Gateway, make_gateway
from smsops.settings import Settings

# Progress callback: (done, total, what) — the CLI draws a bar, flows log, tests ignore.
Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, what: str) -> None:
    return None


@dataclass
class Context:
    """An open smsops installation. Build one per front door: ``Context.open()``."""

    settings: Settings
    gateway_factory: Callable[[Settings], Gateway] = make_gateway
    progress: Progress = field(default=no_progress)
    # What time it is (aware, UTC) for the decisions of a send: a send time in the past
    # (R12), the sending window (#11), the completion estimate, what is due. Tests put a
    # clock here that they move to 10:00 tomorrow instead of waiting for it (#14). Leases
    # are judged by the database's clock, never by this one.
    clock: Callable[[], datetime] = field(default=clocks.now)

    @classmethod
    def open(cls, settings: Settings | None = None, **kwargs: object) -> Context:
        return cls(settings or Settings(), **kwargs)  # type: ignore[arg-type]

    @cached_property
    def engine(self) -> Engine:
        return store.connect(self.settings.database_url, self.settings.busy_timeout)

    def gateway(self) -> Gateway:
        return self.gateway_factory(self.settings)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
