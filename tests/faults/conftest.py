"""Fault injection for real (DESIGN.md, "Failure model"): each test in this folder breaks
something a production sender meets — a signal, a file-size limit, a stopped database, a
held lock, a killed gateway, a caller without the token — and then checks what must hold:
every (delivery, phone, message) sent exactly once, except the few that were on the wire
at the fault (``outcome_unknown``, ticket spent, never resent); debits = sent + unknown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sites import Store, funded_site, reap_started

pytestmark = pytest.mark.slow

no_leftovers = pytest.fixture(autouse=True)(reap_started)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "postgres":
        return Store(request.getfixturevalue("postgres_admin"))
    return Store(None)


@pytest.fixture
def site_factory(tmp_path: Path, store: Store) -> Iterator[object]:
    yield lambda users, tickets, **settings: funded_site(
        tmp_path / "site", store, users, tickets, **settings
    )
