"""The database: embedded or external PostgreSQL, migrated, with sync and async pools.

``Database.start(settings)`` is the single entry point. With no ``database_url`` it starts (or
joins) the embedded server under ``<data_dir>/pgdata``; with one it connects there. Either
way it checks the connection, applies pending migrations under an advisory lock and opens a
sync pool; ``open_async_pool()`` adds an async pool inside a running event loop. Every
connection gets ``search_path = <schema>, <pgvector's schema>`` and pgvector's types.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from pgvector.psycopg import register_vector, register_vector_async
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from fengchao_chains.db.embedded import EmbeddedPostgres
from fengchao_chains.db.migrate import (
    MigrationState,
    migrate,
    migration_status,
    search_path,
    vector_extension_schema,
)
from fengchao_chains.errors import DatabaseError, one_line
from fengchao_chains.settings import Settings

logger = logging.getLogger(__name__)


def redact_conninfo(conninfo: str) -> str:
    """``user@host:port/dbname`` without the password, for logs and status output."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparseable connection string>"
    user = params.get("user") or ""
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or user
    return f"{user}@{host}:{port}/{dbname}" if user else f"{host}:{port}/{dbname}"


def _validated_conninfo(url: str) -> str:
    """Parse the URL up front: libpq's own parse errors quote the string, password included."""
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise DatabaseError(
            "FENGCHAO_DATABASE_URL is not a valid PostgreSQL connection string"
            " (expected postgresql://user:password@host:port/dbname)"
        ) from None
    return url


@dataclass
class Database:
    """A started database: connection details, pools and (when embedded) the server handle."""

    conninfo: str
    schema: str
    vector_schema: str
    embedded: EmbeddedPostgres | None = None
    pool_min_size: int = 1
    pool_max_size: int = 10
    connect_timeout: float = 10.0
    _pool: ConnectionPool | None = field(default=None, repr=False)
    hnsw_ef_search: int = 40
    _async_pool: AsyncConnectionPool | None = field(default=None, repr=False)
    _async_pool_loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ lifecycle --------
    @classmethod
    def start(cls, settings: Settings) -> Database:
        """Start or connect, migrate, and open the sync pool."""
        embedded: EmbeddedPostgres | None = None
        if settings.database_url is None:
            embedded = EmbeddedPostgres(settings.data_dir)
            url = embedded.start()
        else:
            url = _validated_conninfo(settings.database_url.get_secret_value())
        try:
            database = cls._connect_and_migrate(url, settings, embedded)
        except BaseException:
            if embedded is not None:
                embedded.stop()
            raise
        logger.info("database ready: %s (schema %s)", database.target, database.schema)
        return database

    @classmethod
    def _connect_and_migrate(
        cls, url: str, settings: Settings, embedded: EmbeddedPostgres | None
    ) -> Database:
        password = str(conninfo_to_dict(url).get("password") or "")
        timeout = settings.database_connect_timeout
        pool: ConnectionPool | None = None
        try:
            with psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=max(1, round(timeout)),
                application_name="fengchao-migrate",
            ) as conn:
                migrate(
                    conn, settings.database_schema, lock_timeout=settings.migration_lock_timeout
                )
                vector_schema = vector_extension_schema(conn) or "public"
            database = cls(
                conninfo=url,
                schema=settings.database_schema,
                vector_schema=vector_schema,
                embedded=embedded,
                pool_min_size=settings.database_pool_min_size,
                pool_max_size=max(settings.database_pool_max_size, settings.database_pool_min_size),
                connect_timeout=timeout,
                hnsw_ef_search=settings.knowledge_ef_search,
            )
            pool = ConnectionPool(
                database.pool_conninfo,
                min_size=database.pool_min_size,
                max_size=database.pool_max_size,
                configure=_configure_sync,
                timeout=timeout,
                open=False,
                name="fengchao-sync",
            )
            pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:
            if pool is not None:
                pool.close()
            target, reason = redact_conninfo(url), one_line(exc, redact=password)
            if isinstance(exc, psycopg.OperationalError):
                raise DatabaseError(f"cannot connect to PostgreSQL at {target}: {reason}") from None
            raise DatabaseError(f"PostgreSQL at {target} refused start-up: {reason}") from None
        database._pool = pool
        return database

    async def open_async_pool(self) -> AsyncConnectionPool:
        """Open the async pool (idempotent); call from inside the event loop that uses it.

        A pool belongs to the event loop that opened it.  Called from another loop (a library
        user's second ``asyncio.run``), it opens a new pool for that loop; the old loop is
        gone or busy, so its pool is left to be collected.
        """
        loop = asyncio.get_running_loop()
        if self._async_pool is not None and self._async_pool_loop is not loop:
            logger.debug("opening a new async pool for another event loop")
            self._async_pool = None
        if self._async_pool is None:
            pool = AsyncConnectionPool(
                self.pool_conninfo,
                min_size=self.pool_min_size,
                max_size=self.pool_max_size,
                configure=_configure_async,
                timeout=self.connect_timeout,
                open=False,
                name="fengchao-async",
            )
            await pool.open(wait=True, timeout=self.connect_timeout)
            self._async_pool, self._async_pool_loop = pool, loop
        return self._async_pool

    async def close_async_pool(self) -> None:
        pool, self._async_pool = self._async_pool, None
        if pool is not None:
            await pool.close()

    def close(self) -> None:
        """Close the sync pool and release the embedded server (idempotent).

        Close the async pool first (``close_async_pool``) from its own event loop.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None

    # ------------------------------------------------------------------ access -----------
    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise DatabaseError("the database is closed")
        return self._pool

    @property
    def async_pool(self) -> AsyncConnectionPool:
        if self._async_pool is None:
            raise DatabaseError("the async pool is not open: await open_async_pool() first")
        return self._async_pool

    async def alisten(
        self, channel: str, *, purpose: str, **conninfo: Any
    ) -> psycopg.AsyncConnection[Any]:
        """A new autocommit connection LISTENing on ``channel``, with ``conninfo`` added to
        the pool's connection settings (the caller closes it). A failure is a
        :class:`DatabaseError` saying it cannot ``purpose``, the password kept out."""
        params = make_conninfo(self.pool_conninfo, **conninfo)
        try:
            conn = await psycopg.AsyncConnection.connect(params, autocommit=True)
        except psycopg.Error as exc:
            password = str(conninfo_to_dict(self.conninfo).get("password") or "")
            reason = one_line(exc, redact=password or None)
            raise DatabaseError(f"cannot {purpose}: {reason}") from None
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except psycopg.Error as exc:
            await conn.close()
            raise DatabaseError(f"cannot {purpose}: {one_line(exc)}") from None
        except BaseException:
            await conn.close()
            raise
        return conn

    @property
    def pool_conninfo(self) -> str:
        """The connection string with our search_path, application name and the knowledge
        base's HNSW search settings added.

        ``hnsw.iterative_scan`` lets a filtered vector query keep scanning the index until it
        has enough rows that pass the filter (pgvector 0.8); ``relaxed_order`` needs the
        re-sort the retriever does anyway.  Servers with an older pgvector ignore both.
        """
        params: dict[str, Any] = conninfo_to_dict(self.conninfo)
        options = params.get("options", "")
        path = search_path(self.schema, self.vector_schema).replace(" ", "")
        params["options"] = (
            f"{options} -c search_path={path} -c hnsw.ef_search={self.hnsw_ef_search}"
            " -c hnsw.iterative_scan=relaxed_order"
        ).strip()
        params.setdefault("application_name", "fengchao")
        params.setdefault("connect_timeout", str(max(1, round(self.connect_timeout))))
        return make_conninfo("", **params)

    @property
    def target(self) -> str:
        """A password-free description: where the data lives."""
        if self.embedded is not None:
            return f"embedded PostgreSQL in {self.embedded.pgdata}"
        return redact_conninfo(self.conninfo)

    def status(self) -> DatabaseStatus:
        with self.pool.connection() as conn:
            version = conn.execute("SHOW server_version").fetchone()
            server_version = str(version[0]) if version else "unknown"
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
            instance = conn.execute(
                "SELECT created_at, created_by_version FROM instance"
            ).fetchone()
            migrations = migration_status(conn, self.schema)
            conn.commit()
        return DatabaseStatus(
            mode="embedded" if self.embedded is not None else "external",
            target=self.target,
            schema=self.schema,
            server_version=server_version,
            pgvector_version=str(row[0]) if row else None,
            created_at=instance[0] if instance else None,
            created_by_version=str(instance[1]) if instance else None,
            migrations=migrations,
            sharing_processes=self.embedded.handles() if self.embedded is not None else [],
        )


@dataclass(frozen=True)
class DatabaseStatus:
    mode: str
    target: str
    schema: str
    server_version: str
    pgvector_version: str | None
    created_at: datetime | None
    created_by_version: str | None
    migrations: list[MigrationState]
    sharing_processes: list[int]


def _configure_sync(conn: psycopg.Connection) -> None:
    register_vector(conn)
    conn.commit()


async def _configure_async(conn: psycopg.AsyncConnection) -> None:
    await register_vector_async(conn)
    await conn.commit()


_shared: list[Database] = []
_shared_lock = threading.Lock()


def get_database() -> Database:
    """The process-wide database of the default settings, for library use (``get_retriever``
    without a ``database``): started on first use, closed when the interpreter exits."""
    from fengchao_chains.settings import get_settings

    with _shared_lock:
        if not _shared or _shared[0]._pool is None:
            database = Database.start(get_settings())
            atexit.register(database.close)
            _shared[:] = [database]
        return _shared[0]
