"""API keys (安全中心): api_key/secret_key pairs, the secret encrypted at rest.

A key's secret signs its HS256 tokens, so whoever reads it can act as the key.  It is shown
once, when the key is created, and stored only as a Fernet token under the server's master
key (``FENGCHAO_MASTER_KEY``, or ``<data_dir>/master.key`` created on first use): a database
dump or backup alone cannot sign tokens.  Revoking a key keeps its row, so its name and
history stay listed, but the key no longer has a usable secret.

The server does not read the table on every request: each process caches what it looked up
(:mod:`fengchao_chains.gateway.key_cache`), and a revocation is pushed to every process by
``NOTIFY`` in the revoking transaction.  Any future change to a key's secret or admin flag
must send it the same way (:func:`_notify_changed`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet, InvalidToken

from fengchao_chains.db import Database
from fengchao_chains.errors import ConfigurationError, DatabaseError, FengchaoError
from fengchao_chains.gateway.key_cache import (
    KeyCache,
    KeyChangeListener,
    evict_everywhere,
    key_channel,
    listening,
)
from fengchao_chains.settings import Settings

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "fc-"
MASTER_KEY_FILE = "master.key"
NAME_MAX_CHARS = 200
_API_KEY_MAX_CHARS = 128  # the table's CHECK; longer strings cannot be keys


@dataclass(frozen=True)
class IssuedKey:
    """A new key as created: the only time its secret is available in plain text."""

    api_key: str
    secret_key: str = field(repr=False)
    name: str | None
    created_at: datetime
    admin: bool = False


@dataclass(frozen=True)
class KeyInfo:
    """A stored key as listed: never its secret."""

    api_key: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    admin: bool = False

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class ActiveKey:
    """What a request needs of an active key: its secret (to check the caller's token) and
    whether it is an admin key (which sees every key's usage)."""

    api_key: str
    secret_key: str = field(repr=False)
    admin: bool = False


class UnknownKeyError(FengchaoError):
    """An api_key that was never issued here."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        super().__init__(f"unknown API key {api_key!r} (`fengchao keys list` shows the keys)")


class KeyNameError(FengchaoError):
    """A key name that cannot be stored."""


class KeyStore:
    """The ``api_keys`` table, with secrets encrypted and decrypted by the master key.

    :meth:`aactive`, the per-request lookup, answers from :attr:`cache` while
    :meth:`listening` runs (the server's lifespan runs it); the other methods always read
    the table.
    """

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self._settings = settings
        # checked now (a bad key fails start-up), but created only when a key is issued
        self._fernet = existing_master_fernet(settings)
        self.cache = KeyCache(settings.auth_cache_seconds, (database.target, database.schema))

    def _master(self, *, create: bool) -> Fernet:
        if self._fernet is None:  # another store (the CLI, another process) may have made it
            self._fernet = existing_master_fernet(self._settings)
        if self._fernet is None:
            if create:
                self._fernet = master_fernet(self._settings)
            else:
                raise ConfigurationError(
                    f"the master key file {self._settings.data_dir / MASTER_KEY_FILE} is gone:"
                    " the stored secrets cannot be decrypted (restore it, or set"
                    " FENGCHAO_MASTER_KEY to the key they were stored with)"
                )
        return self._fernet

    def create(self, name: str | None = None, *, admin: bool = False) -> IssuedKey:
        """Issue a new key: ``fc-`` and 24 hex digits, and a 256-bit random secret.  An
        ``admin`` key sees every key's usage in the reports."""
        name = _checked_name(name)
        api_key = API_KEY_PREFIX + secrets.token_hex(12)
        secret_key = secrets.token_urlsafe(32)
        ciphertext = self._master(create=True).encrypt(secret_key.encode("utf-8")).decode("ascii")
        with self.database.pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO api_keys (api_key, name, secret_ciphertext, admin)"
                " VALUES (%s, %s, %s, %s) RETURNING created_at",
                (api_key, name, ciphertext, admin),
            ).fetchone()
        if row is None:  # INSERT ... RETURNING always gives its row
            raise DatabaseError("the new API key was not stored")
        logger.info("created %sAPI key %s", "admin " if admin else "", api_key)
        return IssuedKey(
            api_key=api_key, secret_key=secret_key, name=name, created_at=row[0], admin=admin
        )

    def list(self) -> list[KeyInfo]:
        """Every key, revoked ones included, oldest first."""
        with self.database.pool.connection() as conn:
            rows = conn.execute(
                "SELECT api_key, name, created_at, revoked_at, admin FROM api_keys"
                " ORDER BY created_at, api_key"
            ).fetchall()
        return [KeyInfo(*row) for row in rows]

    def revoke(self, api_key: str) -> None:
        """Revoke a key: its tokens stop working at once, in every server process (the
        ``NOTIFY`` goes out with the commit; this process's caches are evicted before this
        returns).  Revoking twice is harmless; an unknown key raises
        :class:`UnknownKeyError`."""
        with self.database.pool.connection() as conn:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
                " WHERE api_key = %s RETURNING revoked_at",
                (api_key,),
            ).fetchone()
            if row is not None:
                _notify_changed(conn, self.database.schema, api_key)
        if row is None:
            raise UnknownKeyError(api_key)
        evict_everywhere(self.cache.scope, api_key)
        logger.info("revoked API key %s", api_key)

    def secret(self, api_key: str) -> str | None:
        """The secret of an active key; None for an unknown or revoked one."""
        if not _may_be_key(api_key):
            return None
        with self.database.pool.connection() as conn:
            row = conn.execute(_ACTIVE_KEY_QUERY, (api_key,)).fetchone()
        return self._decrypt(api_key, row[0]) if row else None

    async def asecret(self, api_key: str) -> str | None:
        """:meth:`secret` on the async pool."""
        active = await self.aactive(api_key)
        return active.secret_key if active else None

    async def aactive(self, api_key: str) -> ActiveKey | None:
        """An active key with its secret, on the async pool (per request, in the server);
        None for an unknown or revoked one.  Answered from :attr:`cache` when it has the
        key; a master key that cannot decrypt the secret is never cached."""
        if not _may_be_key(api_key):
            return None
        cached = self.cache.lookup(api_key)
        if cached is not None:
            return cached.active
        generation = self.cache.generation
        async with self.database.async_pool.connection() as conn:
            cursor = await conn.execute(_ACTIVE_KEY_QUERY, (api_key,))
            row = await cursor.fetchone()
        active = None if row is None else ActiveKey(api_key, self._decrypt(api_key, row[0]), row[1])
        self.cache.store(api_key, active, generation)
        return active

    def listening(self) -> contextlib.AbstractAsyncContextManager[KeyChangeListener]:
        """Cache key lookups while the block runs, listening for revocations from every
        process (a no-op with ``auth_cache_seconds = 0``).  Enter it in the event loop that
        serves requests."""
        return listening(self.database, self.cache)

    def _decrypt(self, api_key: str, ciphertext: str) -> str:
        try:
            return self._master(create=False).decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise ConfigurationError(
                f"the secret of API key {api_key} cannot be decrypted: the master key in use"
                " (FENGCHAO_MASTER_KEY or <data_dir>/master.key) is not the one it was"
                " stored with"
            ) from None

    def __repr__(self) -> str:
        return f"KeyStore({self.database.target}, schema {self.database.schema})"


_ACTIVE_KEY_QUERY = (
    "SELECT secret_ciphertext, admin FROM api_keys WHERE api_key = %s AND revoked_at IS NULL"
)


def _notify_changed(conn: psycopg.Connection[Any], schema: str, api_key: str) -> None:
    """Tell every server process's key cache that ``api_key`` changed; delivered when the
    caller's transaction commits, and only then."""
    conn.execute("SELECT pg_notify(%s, %s)", (key_channel(schema), api_key))


def _may_be_key(api_key: str) -> bool:
    return 0 < len(api_key) <= _API_KEY_MAX_CHARS


def _checked_name(name: str | None) -> str | None:
    """A blank name is no name; a longer one than the table takes is refused up front."""
    if name is None or not name.strip():
        return None
    name = name.strip()
    if len(name) > NAME_MAX_CHARS:
        raise KeyNameError(f"a key name has at most {NAME_MAX_CHARS} characters")
    return name


# --------------------------------------------------------------------------- master key --
def new_master_key() -> str:
    """A fresh Fernet key, for ``FENGCHAO_MASTER_KEY``."""
    return Fernet.generate_key().decode("ascii")


def master_fernet(settings: Settings) -> Fernet:
    """The Fernet of ``settings.master_key``, else of ``<data_dir>/master.key`` (created,
    mode 0600, on first use).  A key that is not a Fernet key is a :class:`ConfigurationError`
    whose message never quotes it."""
    existing = existing_master_fernet(settings)
    if existing is not None:
        return existing
    path = settings.data_dir / MASTER_KEY_FILE
    return _fernet(_create_key_file(path), f"the master key file {path}")


def existing_master_fernet(settings: Settings) -> Fernet | None:
    """:func:`master_fernet` without creating the file: None when there is none yet."""
    if settings.master_key is not None:
        return _fernet(settings.master_key.get_secret_value(), "FENGCHAO_MASTER_KEY")
    path = settings.data_dir / MASTER_KEY_FILE
    try:
        text = _read_key_file(path)
    except FileNotFoundError:
        return None
    return _fernet(text, f"the master key file {path}")


def _fernet(key: str, source: str) -> Fernet:
    try:
        return Fernet(key.strip())
    except ValueError:  # binascii.Error is one too
        raise ConfigurationError(
            f"{source} is not a valid Fernet key (32 url-safe base64-encoded bytes);"
            " `fengchao keys master-key` prints a new one"
        ) from None


def _read_key_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise ConfigurationError(f"the master key file {path} cannot be read: {reason}") from None
    if mode & 0o077:
        logger.warning(
            "the master key file %s can be read by other users (mode %o): chmod 600 it",
            path,
            mode & 0o777,
        )
    return text


def _create_key_file(path: Path) -> str:
    """Write a new key to ``path`` atomically: a complete private temporary file (mkstemp:
    O_EXCL, mode 0600) hard-linked into place, which fails if another process got there
    first; that process's key is then the one used.  Readers never see a partial file."""
    key = Fernet.generate_key()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".master.key.", dir=path.parent)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the master key file {path}: {exc.strerror}"
        ) from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(key + b"\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read_key_file(path)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the master key file {path}: {exc.strerror}"
            ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _fsync_directory(path.parent)
    logger.warning(
        "created the master key file %s: API secrets are encrypted with it; back it up"
        " (without it, every key must be issued again)",
        path,
    )
    return key.decode("ascii")


def _fsync_directory(directory: Path) -> None:
    """Make the new file's directory entry durable (losing the key loses every secret)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
