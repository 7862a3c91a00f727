"""The key and verified-token cache over real PostgreSQL: a repeat token costs no key query,
a revocation from another process arrives by NOTIFY within a second, a dropped listener
clears the cache and comes back, and nothing cached outlives a token's exp or a key's
revocation.

"No key query" is shown by closing the async pool: any lookup would then fail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import jwt
import psycopg
import pytest

from fengchao_chains.db import Database
from fengchao_chains.errors import DatabaseError
from fengchao_chains.gateway.auth import AuthError, Caller, TokenVerifier, issue_token
from fengchao_chains.gateway.key_cache import KeyCache, KeyChangeListener
from fengchao_chains.gateway.keys import ActiveKey, KeyStore
from fengchao_chains.settings import Settings
from tests.processes import ok, run_cli, settings_env

UNKNOWN = "fc-000000000000000000000000"


@asynccontextmanager
async def serving(
    database: Database, keys: KeyStore, *, listen: bool = True
) -> AsyncIterator[tuple[TokenVerifier, KeyChangeListener | None]]:
    """What the server's lifespan does: the async pool, then the key listener."""
    await database.open_async_pool()
    try:
        if listen:
            async with keys.listening() as listener:
                yield TokenVerifier(keys), listener
        else:
            yield TokenVerifier(keys), None
    finally:
        await database.close_async_pool()


@asynccontextmanager
async def without_database(database: Database) -> AsyncIterator[None]:
    """The async pool closed: a key lookup in the block raises DatabaseError."""
    await database.close_async_pool()
    try:
        yield
    finally:
        await database.open_async_pool()


async def refused_within(verifier: TokenVerifier, token: str, seconds: float) -> float:
    """Seconds until ``token`` is refused (asserted to be under ``seconds``)."""
    start = time.monotonic()
    while True:
        try:
            await verifier.averify(token)
        except AuthError:
            return time.monotonic() - start
        elapsed = time.monotonic() - start
        assert elapsed < seconds, f"still accepted after {elapsed:.2f} s"
        await asyncio.sleep(0.005)


def now_ms() -> int:
    return int(time.time() * 1000)


def cached_settings(settings: Settings, seconds: float) -> Settings:
    return settings.model_copy(update={"auth_cache_seconds": seconds})


# --------------------------------------------------------------------------- hot path ----
async def test_a_repeat_token_costs_no_key_query(database: Database, settings: Settings) -> None:
    keys = KeyStore(database, settings)
    issued = keys.create("hot")
    token = issue_token(issued.api_key, issued.secret_key, 60)
    async with serving(database, keys) as (verifier, _):
        expected = Caller(api_key=issued.api_key)
        assert await verifier.averify(token) == expected
        assert len(verifier.tokens) == 1 and issued.api_key in keys.cache
        async with without_database(database):
            assert await verifier.averify(token) == expected  # remembered token
            fresh = issue_token(issued.api_key, issued.secret_key, 120)
            assert await verifier.averify(fresh) == expected  # cached key, JWT checked
            pair = f"{issued.api_key}:{issued.secret_key}"
            assert await verifier.averify(pair) == expected
            stranger = keys.create("not looked up yet")  # sync pool: still open
            with pytest.raises(DatabaseError, match="async pool is not open"):
                await verifier.averify(issue_token(stranger.api_key, stranger.secret_key, 60))
        assert issued.secret_key not in repr(keys.cache) + repr(verifier.tokens)


@pytest.mark.parametrize("case", ["no listener", "auth_cache_seconds=0"])
async def test_without_a_listener_or_with_caching_off_every_request_reads_the_key(
    database: Database, settings: Settings, case: str
) -> None:
    """Today's behaviour: nothing is cached, so a closed pool fails the repeat request."""
    off = case == "auth_cache_seconds=0"
    keys = KeyStore(database, cached_settings(settings, 0) if off else settings)
    issued = keys.create()
    token = issue_token(issued.api_key, issued.secret_key, 60)
    async with serving(database, keys, listen=off) as (verifier, listener):
        assert await verifier.averify(token) == Caller(api_key=issued.api_key)
        assert len(keys.cache) == 0 and len(verifier.tokens) == 0
        assert listener is None or listener.backend_pid is None  # caching off: no connection
        async with without_database(database):
            with pytest.raises(DatabaseError):
                await verifier.averify(token)


# --------------------------------------------------------------------------- refusals ----
async def test_a_cached_token_is_refused_once_its_exp_passes(
    database: Database, settings: Settings
) -> None:
    keys = KeyStore(database, settings)
    issued = keys.create()
    exp = now_ms() + 400
    token = jwt.encode({"api_key": issued.api_key, "exp": exp}, issued.secret_key, "HS256")
    async with serving(database, keys) as (verifier, _):
        assert await verifier.averify(token) == Caller(api_key=issued.api_key)
        assert len(verifier.tokens) == 1
        await asyncio.sleep(max(0.0, (exp - now_ms()) / 1000) + 0.05)
        with pytest.raises(AuthError, match="token expired"):
            await verifier.averify(token)


async def test_a_cached_key_still_checks_every_new_signature_and_secret(
    database: Database, settings: Settings
) -> None:
    keys = KeyStore(database, settings)
    issued = keys.create()
    async with serving(database, keys) as (verifier, _):
        good = issue_token(issued.api_key, issued.secret_key, 60)
        assert await verifier.averify(good) == Caller(api_key=issued.api_key)
        async with without_database(database):  # every answer below is the cached key's
            forged = issue_token(issued.api_key, "not-the-secret" * 3, 60)
            with pytest.raises(AuthError, match="signature does not match"):
                await verifier.averify(forged)
            header, _, signature = good.split(".")
            body = jwt.utils.base64url_encode(
                f'{{"api_key":"{issued.api_key}","exp":{now_ms() + 600_000}}}'.encode()
            ).decode()
            with pytest.raises(AuthError, match="signature does not match"):
                await verifier.averify(f"{header}.{body}.{signature}")  # payload swapped
            with pytest.raises(AuthError, match="wrong secret_key"):
                await verifier.averify(f"{issued.api_key}:{issued.secret_key}x")
            with pytest.raises(AuthError, match="wrong secret_key"):
                await verifier.averify(f"{issued.api_key}:{issued.secret_key[:-1]}")
            assert await verifier.averify(good) == Caller(api_key=issued.api_key)


async def test_unknown_keys_are_remembered_briefly_and_boundedly(
    database: Database, settings: Settings
) -> None:
    keys = KeyStore(database, settings)
    token = issue_token(UNKNOWN, "whatever-secret-of-thirty-two-bytes", 60)
    async with serving(database, keys) as (verifier, _):
        with pytest.raises(AuthError, match="unknown or revoked"):
            await verifier.averify(token)
        assert keys.cache.refusals == 1
        async with without_database(database):  # the flood of one bad key stays off the db
            for _ in range(3):
                with pytest.raises(AuthError, match="unknown or revoked"):
                    await verifier.averify(token)
    assert keys.cache.negative_ttl <= 5.0


def test_the_refusal_cache_is_bounded_and_drops_the_oldest() -> None:
    cache = KeyCache(30, ("unit", "unit"), negative_max=3)
    cache.resume()
    for n in range(10):
        cache.store(f"fc-bad-{n}", None, cache.generation)
    assert cache.refusals == 3 and len(cache) == 3
    assert [f"fc-bad-{n}" in cache for n in (6, 7, 8, 9)] == [False, True, True, True]


def test_a_lookup_that_raced_an_eviction_is_not_stored() -> None:
    cache = KeyCache(30, ("unit", "race"))
    cache.resume()
    active = ActiveKey("fc-raced", "secret")
    before = cache.generation
    cache.evict("fc-raced")  # a revocation lands while the lookup reads the old row
    cache.store("fc-raced", active, before)
    assert "fc-raced" not in cache
    cache.store("fc-raced", active, cache.generation)
    assert cache.is_current(active)
    cache.suspend()  # the listener is gone: nothing is kept or stored
    cache.store("fc-raced", active, cache.generation)
    assert len(cache) == 0 and not cache.active


# --------------------------------------------------------------------------- revocation --
async def test_a_revocation_in_this_process_is_seen_at_once(
    database: Database, settings: Settings
) -> None:
    """Another key store over the same database (an admin tool's) evicts synchronously."""
    keys = KeyStore(database, cached_settings(settings, 3600))
    issued = keys.create()
    token = issue_token(issued.api_key, issued.secret_key, 60)
    async with serving(database, keys) as (verifier, _):
        assert await verifier.averify(token) == Caller(api_key=issued.api_key)
        KeyStore(database, settings).revoke(issued.api_key)
        with pytest.raises(AuthError, match="unknown or revoked"):
            await verifier.averify(token)
        with pytest.raises(AuthError, match="wrong secret_key"):
            await verifier.averify(f"{issued.api_key}:{issued.secret_key}")


async def revoke_in_another_process(settings: Settings, api_key: str) -> None:
    """``fengchao keys revoke`` as a real subprocess (this event loop keeps running)."""
    result = await asyncio.to_thread(run_cli, "keys", "revoke", api_key, env=settings_env(settings))
    ok(result)


async def test_a_revocation_in_another_process_arrives_by_notify_within_a_second(
    database: Database, settings: Settings
) -> None:
    keys = KeyStore(database, cached_settings(settings, 3600))  # the TTL cannot explain it
    issued, other = keys.create("revoked"), keys.create("kept")
    token = issue_token(issued.api_key, issued.secret_key, 60)
    kept = issue_token(other.api_key, other.secret_key, 60)
    async with serving(database, keys) as (verifier, _):
        assert await verifier.averify(token) == Caller(api_key=issued.api_key)
        assert await verifier.averify(kept) == Caller(api_key=other.api_key)
        async with without_database(database):
            assert await verifier.averify(token) == Caller(api_key=issued.api_key)  # cached
        await revoke_in_another_process(settings, issued.api_key)
        assert await refused_within(verifier, token, 1.0) < 1.0
        with pytest.raises(AuthError, match="wrong secret_key"):
            await verifier.averify(f"{issued.api_key}:{issued.secret_key}")
        async with without_database(database):  # the other key's entry was left alone
            assert await verifier.averify(kept) == Caller(api_key=other.api_key)


async def test_a_dropped_listener_clears_the_cache_reconnects_and_still_propagates(
    database: Database, settings: Settings, postgres_url: str
) -> None:
    keys = KeyStore(database, cached_settings(settings, 3600))
    issued = keys.create()
    token = issue_token(issued.api_key, issued.secret_key, 60)
    async with serving(database, keys) as (verifier, listener):
        assert listener is not None and listener.backend_pid is not None
        assert await verifier.averify(token) == Caller(api_key=issued.api_key)
        assert issued.api_key in keys.cache
        old_pid = listener.backend_pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        deadline = time.monotonic() + 10
        while listener.connections < 2:
            assert time.monotonic() < deadline, "the listener did not reconnect"
            await asyncio.sleep(0.01)
        assert listener.backend_pid not in (None, old_pid)
        assert len(keys.cache) == 0 and keys.cache.active
        async with without_database(database):  # cleared: the token is checked afresh
            with pytest.raises(DatabaseError):
                await verifier.averify(token)
        assert await verifier.averify(token) == Caller(api_key=issued.api_key)
        await revoke_in_another_process(settings, issued.api_key)
        assert await refused_within(verifier, token, 1.0) < 1.0


async def test_a_change_without_notify_expires_with_the_ttl(
    database: Database, settings: Settings
) -> None:
    """The safety net: an UPDATE typed into psql sends no NOTIFY; the entry lasts its TTL."""
    keys = KeyStore(database, cached_settings(settings, 1.0))
    issued = keys.create()
    token = issue_token(issued.api_key, issued.secret_key, 60)
    async with serving(database, keys) as (verifier, _):
        assert await verifier.averify(token) == Caller(api_key=issued.api_key)
        with database.pool.connection() as conn:
            conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE api_key = %s", (issued.api_key,)
            )
        assert await verifier.averify(token) == Caller(api_key=issued.api_key)  # still cached
        elapsed = await refused_within(verifier, token, 2.0)
        assert 0.5 < elapsed < 1.5
