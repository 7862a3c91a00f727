"""The vendors' pooled connections, shared by every model in the process.

One urllib3 pool manager per process for sync calls, and one aiohttp session per event loop
for async calls (an async connection belongs to the loop that opened it). Neither is httpx,
for cost: httpx's async pool cost about a third of the gateway's CPU per request under load
(it walks every pooled connection on each request and response), and its sync client about
0.2 ms more per call than urllib3 on loopback, which decided whether a thin vendor SDK was
cheaper per call than our models (docs/benchmarks.md). httpx's ``Timeout`` stays the one
description of a call's time limits, translated here into each client's terms. Both shared
pools go through the proxy the environment names, as requests and httpx do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import urllib.request
import weakref
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import httpx
import urllib3

logger = logging.getLogger("fengchao_chains.llms")

# Streams hold a connection for their whole answer: a gateway serving hundreds of concurrent
# streams needs as many. aiohttp keeps idle ones for 30 s, so bursts do not reconnect each
# time; urllib3 keeps them until the vendor closes them (it checks before reuse).
MAX_CONNECTIONS = 1000
KEEPALIVE_SECONDS = 30.0


def set_max_connections(limit: int) -> None:
    """How many vendor connections this process may hold (``vendor_max_connections``; on
    the sync side, per vendor host); pools made from now on use it (the server sets it
    before its first call)."""
    global MAX_CONNECTIONS  # noqa: PLW0603 - process-wide pool configuration
    MAX_CONNECTIONS = limit


_sync_client: urllib3.PoolManager | None = None
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]
] = weakref.WeakKeyDictionary()


_DEFAULT_HEADERS = urllib3.make_headers(accept_encoding=True)
"""Sent by the shared pool on every sync call: compressed answers are accepted (and
decoded), as the async side does."""


def _sync_pool_settings() -> dict[str, Any]:
    """Of both shared sync pools (direct and through a proxy): a caller past the connection
    limit waits for a free connection, up to the call's pool timeout; retries are ours."""
    return {
        "maxsize": MAX_CONNECTIONS,
        "block": True,
        "retries": False,
        "headers": _DEFAULT_HEADERS,
    }


def sync_client() -> urllib3.PoolManager:
    """The process-wide pool manager (urllib3's pools are thread-safe)."""
    global _sync_client  # noqa: PLW0603 - one lazily built pool per process
    if _sync_client is None:
        _sync_client = urllib3.PoolManager(**_sync_pool_settings())
    return _sync_client


_proxy_pools: dict[str, urllib3.ProxyManager] = {}
_proxy_pools_lock = threading.Lock()


@functools.lru_cache(maxsize=256)
def env_proxy(scheme: str, host: str) -> str | None:
    """The proxy the environment names for a vendor host, as requests and httpx read it
    (``https_proxy`` / ``http_proxy`` / ``all_proxy``, ``no_proxy`` honoured), looked up
    once per host. Only HTTP proxies are used (urllib3 and aiohttp speak no SOCKS)."""
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and not proxy.startswith(("http://", "https://")):
        logger.warning("ignoring the environment's proxy for %s: only HTTP proxies work", host)
        return None
    return proxy or None


def _proxy_of(url: str) -> str | None:
    parts = urlsplit(url)
    return env_proxy(parts.scheme, parts.hostname or "")


def _shared_pool(url: str) -> urllib3.PoolManager:
    """The shared sync pool for a vendor URL: through the environment's proxy if it names
    one for that host."""
    proxy = _proxy_of(url)
    if proxy is None:
        return sync_client()
    with _proxy_pools_lock:
        if proxy not in _proxy_pools:
            auth = urllib3.util.parse_url(proxy).auth  # user:password in the URL, as curl takes
            login = urllib3.make_headers(proxy_basic_auth=unquote(auth)) if auth else None
            _proxy_pools[proxy] = urllib3.ProxyManager(
                proxy, proxy_headers=login, **_sync_pool_settings()
            )
        return _proxy_pools[proxy]


def async_client() -> aiohttp.ClientSession:
    """The pooled async session of the running event loop, closed with the loop."""
    loop = asyncio.get_running_loop()
    known = _async_clients.get(loop)
    if known is not None and not known[0].closed:
        return known[0]
    connector = aiohttp.TCPConnector(
        limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS
    )
    session = aiohttp.ClientSession(connector=connector, trust_env=False, timeout=_NO_TIMEOUT)
    _async_clients[loop] = (session, _closed_with_loop(session))
    return session


def _closed_with_loop(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """An async generator, started here, whose ``finally`` closes ``session``. The loop
    tracks started async generators and closes them when it shuts down
    (``loop.shutdown_asyncgens()``, which ``asyncio.run``, uvicorn and pytest's loops call),
    so a session never outlives its loop with open connections."""

    async def until_loop_shuts_down() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await session.close()

    keeper = until_loop_shuts_down()
    with contextlib.suppress(StopIteration):  # runs to its ``yield`` without awaiting
        keeper.__anext__().send(None)
    return keeper


async def aclose_async_client() -> None:
    """Close the running loop's session now (it is made again on next use)."""
    known = _async_clients.pop(asyncio.get_running_loop(), None)
    if known is not None:
        await known[1].aclose()


_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)


@functools.lru_cache(maxsize=64)
def _urllib3_timeout(connect: float | None, read: float | None) -> urllib3.Timeout:
    return urllib3.Timeout(connect=connect, read=read)


def _aiohttp_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """A model's timeout (httpx's phases) in aiohttp's terms: getting a connection (waiting
    for the pool plus connecting), connecting, and the longest silence while reading."""
    return _client_timeout(timeout.pool, timeout.connect, timeout.read)


@functools.lru_cache(maxsize=64)
def _client_timeout(
    pool: float | None, connect: float | None, read: float | None
) -> aiohttp.ClientTimeout:
    acquire = None if pool is None or connect is None else pool + connect
    return aiohttp.ClientTimeout(total=None, connect=acquire, sock_connect=connect, sock_read=read)
