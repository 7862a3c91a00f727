"""Two real ``fengchao serve`` processes on one database: each answers a repeat token from
its own cache (the ``api_keys`` table renamed away does not disturb it), a key revoked by a
third process stops working in both within a second (NOTIFY; the cache TTL is an hour), and
a listener connection killed by PostgreSQL clears that process's cache and comes back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg
import pytest
from psycopg import sql

from fengchao_chains.db import Database
from fengchao_chains.gateway.auth import issue_token
from fengchao_chains.gateway.key_cache import key_channel
from fengchao_chains.gateway.keys import IssuedKey, KeyStore
from fengchao_chains.settings import Settings
from tests.processes import ServeProcess, settings_env


@pytest.fixture
def issued(database: Database, settings: Settings) -> tuple[KeyStore, IssuedKey, IssuedKey]:
    """Two keys, issued before the servers start (so they find the master key file)."""
    keys = KeyStore(database, settings)
    return keys, keys.create("first"), keys.create("second")


@pytest.fixture
def urls(settings: Settings, issued: object) -> Iterator[list[str]]:
    env = settings_env(settings) | {"FENGCHAO_AUTH_CACHE_SECONDS": "3600"}
    servers = [ServeProcess(env).start() for _ in range(2)]
    try:
        yield [server.wait_ready() for server in servers]
    finally:
        for server in servers:
            try:
                server.stop(timeout=30)
            finally:
                server.kill()


def status(url: str, token: str) -> int:
    """``GET /v1/models``: authentication and nothing else that touches the database."""
    response = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


@contextmanager
def keys_table_away(postgres_url: str, schema: str) -> Iterator[None]:
    """``api_keys`` renamed for the block: any key lookup fails (HTTP 500)."""
    table = sql.Identifier(schema, "api_keys")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO api_keys_away").format(table))
    try:
        yield
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            away = sql.Identifier(schema, "api_keys_away")
            conn.execute(sql.SQL("ALTER TABLE {} RENAME TO api_keys").format(away))


def refused_everywhere_within(urls: list[str], token: str, seconds: float) -> float:
    start = time.monotonic()
    pending = set(urls)
    while pending:
        pending = {url for url in pending if status(url, token) != 401}
        elapsed = time.monotonic() - start
        assert elapsed < seconds, f"{sorted(pending)} still accept it after {elapsed:.2f} s"
    return time.monotonic() - start


def listener_pids(postgres_url: str, schema: str) -> set[int]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'fengchao-keys'"
            " AND query LIKE %s",
            (f"%{key_channel(schema)}%",),
        ).fetchall()
    return {row[0] for row in rows}


def test_two_servers_cache_keys_and_drop_them_on_revocation_or_listener_loss(
    urls: list[str],
    issued: tuple[KeyStore, IssuedKey, IssuedKey],
    postgres_url: str,
    settings: Settings,
) -> None:
    keys, first, second = issued
    schema = settings.database_schema
    token = issue_token(first.api_key, first.secret_key, 600)
    other = issue_token(second.api_key, second.secret_key, 600)
    stranger = keys.create("never used")
    assert all(status(url, t) == 200 for url in urls for t in (token, other))

    # cached: the table can go away, and the cached keys still authenticate; an uncached
    # key, a lookup, fails, so the rename does break lookups
    with keys_table_away(postgres_url, schema):
        assert [status(url, t) for url in urls for t in (token, other)] == [200] * 4
        fresh = issue_token(first.api_key, first.secret_key, 300)  # key cached, JWT checked
        assert [status(url, fresh) for url in urls] == [200, 200]
        unseen = issue_token(stranger.api_key, stranger.secret_key, 60)
        assert [status(url, unseen) for url in urls] == [500, 500]

    # revoked by this process (a third one): both servers refuse within a second
    keys.revoke(first.api_key)
    assert refused_everywhere_within(urls, token, 1.0) < 1.0
    assert [status(url, fresh) for url in urls] == [401, 401]
    assert [status(url, other) for url in urls] == [200, 200]

    # PostgreSQL kills both listeners: each reconnects, having cleared its cache
    before = listener_pids(postgres_url, schema)
    assert len(before) == 2
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for pid in before:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + 15
    while len(after := listener_pids(postgres_url, schema)) < 2:
        assert time.monotonic() < deadline, "the listeners did not reconnect"
        time.sleep(0.05)
    assert not after & before
    with keys_table_away(postgres_url, schema):  # cleared: the cached key is looked up
        assert [status(url, other) for url in urls] == [500, 500]
    assert [status(url, other) for url in urls] == [200, 200]
    keys.revoke(second.api_key)  # and revocations still arrive after the reconnection
    assert refused_everywhere_within(urls, other, 1.0) < 1.0
