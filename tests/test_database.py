from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fengchao_chains.db import Database, redact_conninfo
from fengchao_chains.db.migrate import (
    Migration,
    advisory_lock_key,
    discover_migrations,
    migrate,
    migration_status,
)
from fengchao_chains.errors import DatabaseError
from fengchao_chains.settings import Settings


def test_start_migrates_and_pools_work(database: Database, schema_name: str) -> None:
    with database.pool.connection() as conn:
        path = conn.execute("SHOW search_path").fetchone()
        assert path is not None and path[0].startswith(f'"{schema_name}"')
        row = conn.execute("SELECT created_by_version FROM instance").fetchone()
        assert row is not None
        vector = conn.execute("SELECT '[1,2,3]'::vector").fetchone()
        assert vector is not None and list(vector[0]) == [1.0, 2.0, 3.0]  # pgvector types loaded
    status = database.status()
    assert status.pgvector_version is not None
    assert tuple(int(p) for p in status.pgvector_version.split(".")[:2]) >= (0, 8)
    assert [m.applied_at is not None for m in status.migrations] == [True] * len(
        discover_migrations()
    )


async def test_async_pool(database: Database) -> None:
    pool = await database.open_async_pool()
    assert await database.open_async_pool() is pool  # idempotent
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT '[0.5,1]'::vector <=> '[1,0.5]'::vector")
        row = await cursor.fetchone()
        assert row is not None and 0 < float(row[0]) < 1
    await database.close_async_pool()


def test_second_start_applies_nothing_again(settings: Settings, database: Database) -> None:
    again = Database.start(settings)
    try:
        with again.pool.connection() as conn:
            rows = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
            assert rows == (len(discover_migrations()),)
            assert conn.execute("SELECT count(*) FROM instance").fetchone() == (1,)
    finally:
        again.close()


# Not idempotent on purpose: applying either twice would fail or duplicate rows.
STRICT_MIGRATIONS = [
    Migration(
        1, "create", "CREATE TABLE counter (n integer NOT NULL); INSERT INTO counter VALUES (1);"
    ),
    Migration(2, "bump", "SELECT pg_sleep(0.2); UPDATE counter SET n = n + 1;"),
]


def test_concurrent_migrations_apply_exactly_once(postgres_url: str, schema_name: str) -> None:
    barrier = threading.Barrier(6)

    def run() -> list[int]:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            barrier.wait()
            return [m.version for m in migrate(conn, schema_name, STRICT_MIGRATIONS)]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: run(), range(6)))
    assert sorted(results) == [[], [], [], [], [], [1, 2]]
    with psycopg.connect(postgres_url) as conn:
        counter = sql.SQL("SELECT n FROM {}.counter").format(sql.Identifier(schema_name))
        assert conn.execute(counter).fetchall() == [(2,)]


def test_failed_migration_is_rolled_back_and_reported(postgres_url: str, schema_name: str) -> None:
    broken = [
        STRICT_MIGRATIONS[0],
        Migration(2, "broken", "CREATE TABLE half (x int); INSERT INTO half VALUES (1/0);"),
    ]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        with pytest.raises(
            DatabaseError, match=r"migration 0002_broken failed and was rolled back"
        ):
            migrate(conn, schema_name, broken)
        assert conn.execute("SELECT to_regclass(%s)", (f"{schema_name}.half",)).fetchone() == (
            None,
        )
        states = migration_status(conn, schema_name, broken)
        assert [(s.version, s.applied_at is not None) for s in states] == [(1, True), (2, False)]
        # The lock was released: a fixed migration list applies at once.
        assert [m.version for m in migrate(conn, schema_name, STRICT_MIGRATIONS)] == [2]


def test_changed_migration_is_refused(postgres_url: str, schema_name: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate(conn, schema_name, STRICT_MIGRATIONS[:1])
        edited = [Migration(1, "create", STRICT_MIGRATIONS[0].sql + " -- edited")]
        with pytest.raises(DatabaseError, match="0001_create changed after it was applied"):
            migrate(conn, schema_name, edited)


def test_database_from_a_newer_release_is_refused(postgres_url: str, schema_name: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate(conn, schema_name, STRICT_MIGRATIONS)
        with pytest.raises(DatabaseError, match="has migration 0002, which this release"):
            migrate(conn, schema_name, STRICT_MIGRATIONS[:1])


def test_waits_for_another_process_then_gives_up(postgres_url: str, schema_name: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (advisory_lock_key(schema_name),))
        with (
            psycopg.connect(postgres_url, autocommit=True) as conn,
            pytest.raises(DatabaseError, match="another process has been applying"),
        ):
            migrate(conn, schema_name, STRICT_MIGRATIONS, lock_timeout=0.3)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://app:hunter2-secret@db/x", "is not a valid PostgreSQL connection string"),
        ("host=db password=hunter2-secret junk", "is not a valid PostgreSQL connection string"),
        ("postgresql://app:hunter2-secret@/db?port=notaport", 'invalid integer value "notaport"'),
    ],
)
def test_bad_url_is_named_without_the_password(url: str, expected: str) -> None:
    settings = Settings(database_url=url)
    with pytest.raises(DatabaseError) as info:
        Database.start(settings)
    assert "hunter2-secret" not in str(info.value)
    assert expected in str(info.value)


def test_unreachable_server_is_one_line_without_password() -> None:
    settings = Settings(
        database_url="postgresql://app:hunter2-secret@127.0.0.1:1/db",
        database_connect_timeout=2,
    )
    with pytest.raises(DatabaseError) as info:
        Database.start(settings)
    message = str(info.value)
    assert message.startswith("cannot connect to PostgreSQL at app@127.0.0.1:1/db:")
    assert "hunter2-secret" not in message
    assert "\n" not in message


def test_redact_conninfo() -> None:
    assert redact_conninfo("postgresql://u:p@h:5433/d") == "u@h:5433/d"
    assert redact_conninfo("host=/tmp/s dbname=x user=y password=z") == "y@/tmp/s:5432/x"
    assert redact_conninfo("not a dsn = =") == "<unparseable connection string>"


@pytest.fixture
def limited_database(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A new database owned by a role that is not a superuser: (its URL, a superuser URL)."""
    suffix = uuid.uuid4().hex[:10]
    role, dbname = f"fc_role_{suffix}", f"fc_db_{suffix}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        try:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test server does not let this user create roles")
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(role)
            )
        )
    yield (
        make_conninfo(postgres_url, user=role, dbname=dbname),
        make_conninfo(postgres_url, dbname=dbname),
    )
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_user_who_may_not_create_pgvector_is_told_what_to_do(
    limited_database: tuple[str, str],
) -> None:
    url, _ = limited_database
    with pytest.raises(
        DatabaseError, match=r"ask an administrator to run: CREATE EXTENSION vector"
    ):
        Database.start(Settings(database_url=url))


def test_pgvector_installed_by_an_administrator_in_its_own_schema(
    limited_database: tuple[str, str],
) -> None:
    url, admin_url = limited_database
    role = conninfo_to_dict(url)["user"]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA extensions")
        admin.execute("CREATE EXTENSION vector SCHEMA extensions")
        admin.execute(
            sql.SQL("GRANT USAGE ON SCHEMA extensions TO {}").format(sql.Identifier(str(role)))
        )
    database = Database.start(Settings(database_url=url))
    try:
        assert database.vector_schema == "extensions"
        with database.pool.connection() as conn:
            row = conn.execute("SELECT '[3,4]'::vector <-> '[0,0]'::vector").fetchone()
            assert row == (5.0,)
            owner = conn.execute(
                "SELECT tableowner FROM pg_tables WHERE schemaname = 'fengchao'"
                " AND tablename = 'instance'"
            ).fetchone()
            assert owner == (role,)
    finally:
        database.close()
