"""Versioned schema migrations: numbered SQL files applied at start-up.

Guarantees:

* **idempotent**: applied versions are recorded in ``<schema>.schema_migrations`` and skipped;
* **transactional**: each migration and its record commit together or not at all;
* **safe under concurrency**: a PostgreSQL advisory lock (per schema) serialises processes that
  start at the same moment; the second waits, then finds nothing left to do;
* **tamper-evident**: an applied migration whose file changed, or a database migrated by a newer
  release, stops start-up with a clear message instead of guessing.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import psycopg
from psycopg import sql

from fengchao_chains import __version__
from fengchao_chains.errors import DatabaseError, one_line

MIGRATIONS_PACKAGE = "fengchao_chains.db.migrations"
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    version: int
    name: str
    applied_at: datetime | None  # None: pending


def discover_migrations(package: str = MIGRATIONS_PACKAGE) -> list[Migration]:
    """The migrations shipped in ``package``, ordered by version."""
    found: dict[int, Migration] = {}
    for entry in resources.files(package).iterdir():
        match = _FILENAME.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise DatabaseError(f"two migrations share version {version:04d} in {package}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def advisory_lock_key(schema: str) -> int:
    """A stable signed 64-bit key for this schema's migration lock."""
    digest = hashlib.blake2b(f"fengchao_chains:migrations:{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def vector_extension_schema(conn: psycopg.Connection) -> str | None:
    """The schema pgvector is installed in, or None when it is not enabled."""
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'vector'"
    ).fetchone()
    return str(row[0]) if row else None


def ensure_vector_extension(conn: psycopg.Connection) -> str:
    """Create pgvector if missing and return the schema it lives in."""
    existing = vector_extension_schema(conn)
    if existing:
        return existing
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
    except psycopg.errors.UniqueViolation:
        # Another schema's migrations created it at the same moment (their lock is not ours).
        return vector_extension_schema(conn) or "public"
    except psycopg.errors.InsufficientPrivilege:
        raise DatabaseError(
            "the pgvector extension is not enabled in this database and this user may not"
            " create it; ask an administrator to run: CREATE EXTENSION vector;"
        ) from None
    except psycopg.errors.FeatureNotSupported:
        raise DatabaseError("the pgvector extension is not installed on this server") from None
    except psycopg.errors.UndefinedFile:
        raise DatabaseError(
            "the pgvector extension is not installed on this PostgreSQL server"
            " (install pgvector, or unset FENGCHAO_DATABASE_URL to use the embedded server)"
        ) from None
    return "public"


def migrate(
    conn: psycopg.Connection,
    schema: str,
    migrations: Iterable[Migration] | None = None,
    *,
    lock_timeout: float = 120.0,
) -> list[Migration]:
    """Bring ``schema`` up to date; return the migrations this call applied.

    ``conn`` must be in autocommit mode (each migration opens its own transaction).
    """
    if not conn.autocommit:
        raise ValueError("migrate() needs an autocommit connection")
    migrations = list(discover_migrations() if migrations is None else migrations)
    key = advisory_lock_key(schema)
    _acquire_lock(conn, key, lock_timeout)
    try:
        vector_schema = ensure_vector_extension(conn)
        _ensure_bookkeeping(conn, schema)
        applied = _applied_checksums(conn, schema)
        _check_history(migrations, applied)
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            _apply(conn, schema, vector_schema, migration)
            done.append(migration)
        return done
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def migration_status(
    conn: psycopg.Connection, schema: str, migrations: Iterable[Migration] | None = None
) -> list[MigrationState]:
    """Every known migration with its applied time (None while pending)."""
    migrations = list(discover_migrations() if migrations is None else migrations)
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".schema_migrations',)
    ).fetchone()
    applied: dict[int, datetime] = {}
    if exists and exists[0]:
        query = sql.SQL("SELECT version, applied_at FROM {}.schema_migrations").format(
            sql.Identifier(schema)
        )
        applied = {int(v): at for v, at in conn.execute(query).fetchall()}
    return [MigrationState(m.version, m.name, applied.get(m.version)) for m in migrations]


def _acquire_lock(conn: psycopg.Connection, key: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row and row[0]:
            return
        if time.monotonic() >= deadline:
            raise DatabaseError(
                f"another process has been applying database migrations for over {timeout:.0f}s;"
                " wait for it to finish or raise FENGCHAO_MIGRATION_LOCK_TIMEOUT"
            )
        time.sleep(0.05)


def _ensure_bookkeeping(conn: psycopg.Connection, schema: str) -> None:
    ident = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(),"
            " applied_by_version text NOT NULL)"
        ).format(ident)
    )


def _applied_checksums(conn: psycopg.Connection, schema: str) -> dict[int, str]:
    query = sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(
        sql.Identifier(schema)
    )
    return {int(version): str(checksum) for version, checksum in conn.execute(query).fetchall()}


def _check_history(migrations: list[Migration], applied: dict[int, str]) -> None:
    known = {m.version: m for m in migrations}
    unknown = sorted(set(applied) - set(known))
    if unknown:
        raise DatabaseError(
            f"the database has migration {unknown[-1]:04d}, which this release of fengchao-chains"
            f" ({__version__}) does not know; upgrade fengchao-chains or use another database"
        )
    for version, checksum in applied.items():
        if known[version].checksum != checksum:
            raise DatabaseError(
                f"migration {version:04d}_{known[version].name} changed after it was applied;"
                " migrations are append-only: restore the file and add a new migration instead"
            )


def _apply(conn: psycopg.Connection, schema: str, vector_schema: str, migration: Migration) -> None:
    label = f"{migration.version:04d}_{migration.name}"
    try:
        with conn.transaction():
            conn.execute(
                "SELECT set_config('search_path', %s, true),"
                " set_config('fengchao.version', %s, true)",
                (search_path(schema, vector_schema), __version__),
            )
            conn.execute(migration.sql.encode("utf-8"))
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_migrations (version, name, checksum, applied_by_version)"
                    " VALUES (%s, %s, %s, %s)"
                ).format(sql.Identifier(schema)),
                (migration.version, migration.name, migration.checksum, __version__),
            )
    except psycopg.Error as exc:
        raise DatabaseError(
            f"migration {label} failed and was rolled back: {one_line(exc)}"
        ) from None


def search_path(schema: str, vector_schema: str) -> str:
    """The search_path every connection uses: our schema first, then pgvector's."""
    parts = [schema] if vector_schema == schema else [schema, vector_schema]
    return ", ".join(f'"{part}"' for part in parts)
