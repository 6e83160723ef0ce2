"""The database: SQLite file by default, PostgreSQL for shared deployments."""

from smsops.store.engine import connect, read, write
from smsops.store.migrations import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "connect", "read", "write"]
