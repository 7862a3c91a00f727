"""PostgreSQL for every stateful part of the project (embedded by default, external by URL)."""

from fengchao_chains.db.database import Database, DatabaseStatus, get_database, redact_conninfo
from fengchao_chains.db.migrate import Migration, discover_migrations, migrate

__all__ = [
    "Database",
    "DatabaseStatus",
    "Migration",
    "discover_migrations",
    "get_database",
    "migrate",
    "redact_conninfo",
]
