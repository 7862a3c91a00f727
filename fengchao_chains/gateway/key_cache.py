"""The per-process cache of key lookups, and the ``LISTEN`` connection that keeps it honest.

Every authenticated request needs its key's secret: a ``SELECT`` and a Fernet decryption,
about a tenth of the server's busy CPU under load.  The answer changes only when a key is
revoked, so each server process keeps it:

* an active key (its decrypted secret and admin flag) for ``auth_cache_seconds``;
* "unknown or revoked" for at most :data:`NEGATIVE_SECONDS` and at most
  :data:`NEGATIVE_MAX` such answers (oldest dropped first), so a flood of made-up keys costs
  one query per key, not one per request, and cannot grow the process without bound.

**Revocation** is pushed, not waited for: :meth:`KeyStore.revoke
<fengchao_chains.gateway.keys.KeyStore.revoke>` sends ``pg_notify(<channel>, api_key)`` in
the transaction that revokes, and every server process on the database LISTENs on its own
connection (:class:`KeyChangeListener`) and evicts the key when the notification arrives,
i.e. as the revocation commits.  In the revoking process itself every cache over the same
database is evicted synchronously (:func:`evict_everywhere`).

**A cache answers only while its listener is connected.**  When the connection drops, the
cache is cleared and bypassed (every request reads the database, as with caching off) until
``LISTEN`` is back, retried with backoff; so a revocation missed during an outage cannot
outlive it.  The TTL is the safety net for changes that send no notification (an ``UPDATE``
typed into psql).  A process that never starts a listener (the CLI, a library user) never
caches.

A lookup that raced an eviction must not put the old answer back: every eviction bumps a
generation counter, and a lookup stores its result only if the counter has not moved since
it began reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from fengchao_chains.errors import DatabaseError, one_line

if TYPE_CHECKING:
    from fengchao_chains.db import Database
    from fengchao_chains.gateway.keys import ActiveKey

logger = logging.getLogger(__name__)

NEGATIVE_SECONDS = 5.0
"""The longest an "unknown or revoked" answer is trusted."""
NEGATIVE_MAX = 10_000
POSITIVE_MAX = 100_000
RECONNECT_FIRST_SECONDS = 0.25
RECONNECT_MAX_SECONDS = 30.0


def key_channel(schema: str) -> str:
    """The NOTIFY channel of this schema's key changes (hashed, so any schema name fits
    PostgreSQL's 63-byte identifiers; schemas sharing a database stay apart)."""
    digest = hashlib.blake2b(schema.encode(), digest_size=8).hexdigest()
    return f"fengchao_keys_{digest}"


@dataclass(frozen=True, slots=True)
class CachedKey:
    """One cached answer: the active key, or None for unknown/revoked, until ``expires``
    (``time.monotonic()``)."""

    active: ActiveKey | None
    expires: float


class KeyCache:
    """api_key -> the answer of the last lookup, within this process.

    Reads take no lock (one dict lookup); writes do, as a revocation may come from another
    thread (the CLI's or a worker's synchronous :meth:`KeyStore.revoke`).
    """

    def __init__(
        self,
        ttl_seconds: float,
        scope: tuple[str, str],
        *,
        negative_max: int = NEGATIVE_MAX,
        positive_max: int = POSITIVE_MAX,
    ) -> None:
        self.ttl = max(0.0, ttl_seconds)
        self.negative_ttl = min(self.ttl, NEGATIVE_SECONDS)
        self.scope = scope
        """(database target, schema): the caches one revocation evicts in this process."""
        self._negative_max = max(1, negative_max)
        self._positive_max = max(1, positive_max)
        self._positive: dict[str, CachedKey] = {}
        self._negative: OrderedDict[str, CachedKey] = OrderedDict()
        self._generation = 0
        self._listening = False
        self._lock = threading.Lock()
        _register(self)

    @property
    def active(self) -> bool:
        """Whether lookups are being cached now: a TTL above 0 and a live listener."""
        return self._listening and self.ttl > 0

    @property
    def generation(self) -> int:
        """Read before a lookup, handed back to :meth:`store` after it."""
        return self._generation

    def lookup(self, api_key: str) -> CachedKey | None:
        """The cached answer for ``api_key``, or None when it must be read."""
        entry = self._positive.get(api_key)
        if entry is None:
            entry = self._negative.get(api_key)
        if entry is None or entry.expires <= time.monotonic():
            return None
        return entry

    def store(self, api_key: str, active: ActiveKey | None, generation: int) -> None:
        """Remember a lookup's answer, unless caching is off or something was evicted since
        the lookup began (its answer may be the one just revoked)."""
        if self.ttl <= 0:
            return
        with self._lock:
            if not self._listening or generation != self._generation:
                return
            now = time.monotonic()
            if active is None:
                self._negative[api_key] = CachedKey(None, now + self.negative_ttl)
                self._negative.move_to_end(api_key)
                while len(self._negative) > self._negative_max:
                    self._negative.popitem(last=False)
                return
            self._negative.pop(api_key, None)
            if api_key not in self._positive and len(self._positive) >= self._positive_max:
                self._positive.pop(next(iter(self._positive)))
            self._positive[api_key] = CachedKey(active, now + self.ttl)

    def is_current(self, active: ActiveKey) -> bool:
        """Whether ``active`` is this very cache's unexpired entry for its key: what a
        verified token remembered against it relies on (evicted key, forgotten token)."""
        entry = self._positive.get(active.api_key)
        return entry is not None and entry.active is active and entry.expires > time.monotonic()

    def evict(self, api_key: str) -> None:
        with self._lock:
            self._generation += 1
            self._positive.pop(api_key, None)
            self._negative.pop(api_key, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._positive.clear()
            self._negative.clear()

    def resume(self) -> None:
        """The listener is connected: start caching (from empty)."""
        with self._lock:
            self._generation += 1
            self._positive.clear()
            self._negative.clear()
            self._listening = True

    def suspend(self) -> None:
        """The listener is gone: forget everything and cache nothing until it is back."""
        with self._lock:
            self._listening = False
            self._generation += 1
            self._positive.clear()
            self._negative.clear()

    def __contains__(self, api_key: object) -> bool:
        return isinstance(api_key, str) and self.lookup(api_key) is not None

    def __len__(self) -> int:
        return len(self._positive) + len(self._negative)

    @property
    def refusals(self) -> int:
        """Unknown/revoked answers held (at most ``negative_max``)."""
        return len(self._negative)

    def __repr__(self) -> str:  # never the secrets it holds
        state = "caching" if self.active else "off"
        return (
            f"KeyCache({state}, {len(self._positive)} keys, {len(self._negative)} refusals,"
            f" ttl {self.ttl:g}s)"
        )


# ------------------------------------------------------------------ this process --------
_caches: weakref.WeakSet[KeyCache] = weakref.WeakSet()
_caches_lock = threading.Lock()


def _register(cache: KeyCache) -> None:
    with _caches_lock:
        _caches.add(cache)


def evict_everywhere(scope: tuple[str, str], api_key: str) -> None:
    """Evict ``api_key`` from every cache of this process over the same database and schema
    (several key stores may share one: the server's and an admin tool's), without waiting
    for the notification to come back."""
    with _caches_lock:
        caches = [cache for cache in _caches if cache.scope == scope]
    for cache in caches:
        cache.evict(api_key)


# ------------------------------------------------------------------ the listener ---------
class KeyChangeListener:
    """A dedicated connection LISTENing for key changes, evicting each from ``cache``.

    The cache caches only while this listener is connected (see the module docstring).
    """

    def __init__(self, database: Database, cache: KeyCache) -> None:
        self.database = database
        self.cache = cache
        self.channel = key_channel(database.schema)
        self.backend_pid: int | None = None
        """The listening connection's server process (None while disconnected)."""
        self.connections = 0
        """How many times LISTEN was established (1 after start; +1 per reconnection)."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and listen (the cache starts caching), then keep listening in the
        background.  With caching off (``auth_cache_seconds = 0``) this does nothing."""
        if self._task is not None or self.cache.ttl <= 0:
            return
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            conn = await self._connect()
        except DatabaseError as exc:
            logger.warning("%s; keys are read on every request until it works", exc)
        else:
            self._connected(conn)  # caching from the first request on
        self._task = asyncio.create_task(self._run(conn), name="fengchao-key-listener")
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.cache.suspend()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await self.database.alisten(
            self.channel,
            purpose="listen for key revocations",
            application_name="fengchao-keys",
            keepalives=1,  # notice a silently dead peer (TCP only; ignored on a socket file)
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )

    async def _run(self, conn: psycopg.AsyncConnection[Any] | None) -> None:
        delay = RECONNECT_FIRST_SECONDS
        try:
            while True:
                if conn is None:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                    try:
                        conn = await self._connect()
                    except DatabaseError as exc:
                        logger.warning("%s (retrying in %.1f s)", exc, delay)
                        continue
                    self._connected(conn)
                    logger.info("listening for key revocations again; key cache restarted")
                delay = RECONNECT_FIRST_SECONDS
                await self._serve(conn)
                conn = None
        finally:
            self.cache.suspend()
            if conn is not None:
                await conn.close()

    def _connected(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN is in place: notifications from now on reach us, so caching may start."""
        self.backend_pid = conn.info.backend_pid
        self.connections += 1
        self.cache.resume()

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Evict on each notification until the connection fails; then clear the cache."""
        try:
            async with conn:
                async for notify in conn.notifies():
                    self.cache.evict(notify.payload)
        except (psycopg.Error, OSError) as exc:
            logger.warning(
                "key revocation notices lost, key cache cleared (keys are read on every"
                " request until they are back): %s",
                one_line(exc),
            )
        finally:
            self.cache.suspend()
            self.backend_pid = None


@contextlib.asynccontextmanager
async def listening(database: Database, cache: KeyCache) -> AsyncIterator[KeyChangeListener]:
    """Run a :class:`KeyChangeListener` for ``cache`` while the block runs."""
    listener = KeyChangeListener(database, cache)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "the key revocation listener stopped; keys are read on every request from now on",
            exc_info=task.exception(),
        )
