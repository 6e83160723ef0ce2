"""The ``smsops`` command line: a thin front door over the services.

Every command takes ``--json`` (one JSON document on stdout). A refusal prints one line
on stderr and exits 1; usage errors exit 2.
"""
# ruff: noqa: I001 - the modules register their commands in this order (``--help``)

from smsops.cli import admin, sending, history, running  # noqa: F401
from smsops.cli import replies  # noqa: F401
from smsops.cli.common import app, main

__all__ = ["app", "main"]
