"""One cache for the short-lived tokens some vendors derive from their credentials.

Zhipu and SenseNova JWTs are minted on the client; Qianfan access tokens are fetched from
the vendor. Either way a token is shared by every model object, thread and event loop that
uses the same credentials, and reused until a deadline its vendor sets (shortly before it
expires). Concurrent first calls make one token, not one each: a lock per key serialises
the making, a thread lock for sync callers and an asyncio lock per event loop for async
ones (a thread lock held across an ``await`` would block the loop).

Keys name the credentials without holding them: pass secrets through :func:`digest`.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable

Made = tuple[str, float]
"""A new token, and the time (on the cache's clock) until which it may be reused."""


def digest(secret: str) -> str:
    """What stands for a secret in a cache key."""
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenCache:
    """Tokens by key; ``clock`` is the time deadlines are on (called on every look-up)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[Hashable, Made] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._async_locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Hashable, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()

    def get(self, key: Hashable, make: Callable[[float], Made]) -> str:
        """The token for ``key``: the cached one while fresh, else what ``make(now)`` makes.

        Safe in async code only when ``make`` is pure computation (minting a JWT)."""
        token = self._fresh(key, self._clock())
        if token is None:
            with self._lock:
                key_lock = self._key_locks.setdefault(key, threading.Lock())
            with key_lock:
                now = self._clock()
                token = self._fresh(key, now) or self._keep(key, make(now))
        return token

    async def aget(self, key: Hashable, make: Callable[[float], Awaitable[Made]]) -> str:
        """The async twin of :meth:`get`, for a ``make`` that does I/O."""
        token = self._fresh(key, self._clock())
        if token is None:
            loop = asyncio.get_running_loop()
            with self._lock:
                key_lock = self._async_locks.setdefault(loop, {}).setdefault(key, asyncio.Lock())
            async with key_lock:
                now = self._clock()
                token = self._fresh(key, now) or self._keep(key, await make(now))
        return token

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s token (the vendor called it expired or invalid)."""
        with self._lock:
            self._tokens.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()

    def _fresh(self, key: Hashable, now: float) -> str | None:
        with self._lock:
            cached = self._tokens.get(key)
        return cached[0] if cached is not None and now < cached[1] else None

    def _keep(self, key: Hashable, made: Made) -> str:
        with self._lock:
            self._tokens[key] = made
        return made[0]
