"""API keys against real PostgreSQL: issue, list, revoke, secrets encrypted at rest, and the
master key (from the settings or a 0600 file created once, also under a race)."""

from __future__ import annotations

import logging
import stat
import threading
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from fengchao_chains.db import Database
from fengchao_chains.errors import ConfigurationError
from fengchao_chains.gateway.keys import (
    MASTER_KEY_FILE,
    KeyNameError,
    KeyStore,
    UnknownKeyError,
    master_fernet,
    new_master_key,
)
from fengchao_chains.settings import Settings


def same_key(a: Fernet, b: Fernet) -> bool:
    try:
        return a.decrypt(b.encrypt(b"probe")) == b"probe"
    except Exception:
        return False


@pytest.fixture
def keys(database: Database, settings: Settings) -> KeyStore:
    return KeyStore(database, settings)


def test_create_issues_a_fresh_pair_whose_secret_is_looked_up(keys: KeyStore) -> None:
    first, second = keys.create("alice"), keys.create()
    assert first.api_key.startswith("fc-") and len(first.api_key) == 27
    int(first.api_key[3:], 16)  # 24 hex digits
    assert len(first.secret_key) >= 43  # 32 random bytes, url-safe base64
    assert first.api_key != second.api_key and first.secret_key != second.secret_key
    assert (first.name, second.name) == ("alice", None)
    assert keys.secret(first.api_key) == first.secret_key
    assert keys.secret(second.api_key) == second.secret_key
    assert keys.secret("fc-000000000000000000000000") is None
    assert keys.secret("") is None
    assert keys.secret("x" * 10_000) is None


def test_secret_is_never_in_reprs_listings_or_logs(
    keys: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issued = keys.create("bob")
    keys.secret(issued.api_key)
    listed = keys.list()
    keys.revoke(issued.api_key)
    assert issued.secret_key not in repr(issued)
    assert issued.secret_key not in repr(listed) and issued.secret_key not in repr(keys)
    assert issued.api_key in caplog.text  # the key itself is logged, its secret never
    assert issued.secret_key not in caplog.text


def test_the_table_holds_only_ciphertext(
    keys: KeyStore, database: Database, settings: Settings
) -> None:
    issued = keys.create("carol")
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT api_keys::text, secret_ciphertext FROM api_keys WHERE api_key = %s",
            (issued.api_key,),
        ).fetchone()
    assert row is not None
    whole_row, ciphertext = row
    assert issued.secret_key not in whole_row
    fernet = master_fernet(settings)
    assert fernet.decrypt(ciphertext.encode()).decode() == issued.secret_key


def test_list_shows_every_key_oldest_first_and_revocation(keys: KeyStore) -> None:
    a, b = keys.create("a"), keys.create("b")
    keys.revoke(a.api_key)
    listed = keys.list()
    assert [info.api_key for info in listed] == [a.api_key, b.api_key]
    assert [info.name for info in listed] == ["a", "b"]
    assert listed[0].revoked_at is not None and not listed[0].active
    assert listed[1].revoked_at is None and listed[1].active
    assert not hasattr(listed[0], "secret_key")


def test_revoke_ends_the_secret_is_idempotent_and_refuses_unknown_keys(keys: KeyStore) -> None:
    issued = keys.create()
    keys.revoke(issued.api_key)
    assert keys.secret(issued.api_key) is None
    revoked_at = keys.list()[0].revoked_at
    keys.revoke(issued.api_key)  # again: no error, the first time is kept
    assert keys.list()[0].revoked_at == revoked_at
    with pytest.raises(UnknownKeyError, match=r"unknown API key 'fc-nope'"):
        keys.revoke("fc-nope")


async def test_asecret_on_the_async_pool(keys: KeyStore, database: Database) -> None:
    await database.open_async_pool()
    try:
        issued = keys.create()
        assert await keys.asecret(issued.api_key) == issued.secret_key
        assert await keys.asecret("fc-unknown-key") is None
        keys.revoke(issued.api_key)
        assert await keys.asecret(issued.api_key) is None
    finally:
        await database.close_async_pool()


def test_names_blank_is_none_and_too_long_is_refused(keys: KeyStore) -> None:
    assert keys.create("  ").name is None
    assert keys.create("  团队 A ").name == "团队 A"
    with pytest.raises(KeyNameError, match="at most 200"):
        keys.create("x" * 201)
    assert len(keys.list()) == 2


# --------------------------------------------------------------------------- master key --
def test_master_key_file_is_created_0600_once_and_reused(settings: Settings) -> None:
    path = settings.data_dir / MASTER_KEY_FILE
    assert not path.exists()
    first = master_fernet(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert same_key(first, master_fernet(settings))
    assert same_key(first, Fernet(path.read_text().strip()))
    assert [p.name for p in path.parent.iterdir()] == [MASTER_KEY_FILE]  # no temp file left


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "race")
    barrier = threading.Barrier(8)
    found: list[Fernet] = []

    def first_use() -> None:
        barrier.wait()
        found.append(master_fernet(settings))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8
    assert all(same_key(found[0], other) for other in found[1:])
    assert sorted(p.name for p in (tmp_path / "race").iterdir()) == [MASTER_KEY_FILE]


def test_configured_master_key_is_used_and_no_file_is_written(settings: Settings) -> None:
    key = new_master_key()
    configured = settings.model_copy(update={"master_key": SecretStr(key)})
    assert same_key(master_fernet(configured), Fernet(key))
    assert not (settings.data_dir / MASTER_KEY_FILE).exists()


def test_invalid_master_keys_are_configuration_errors_that_do_not_quote_them(
    settings: Settings,
) -> None:
    bad = "not-a-fernet-key-but-secret-material"
    with pytest.raises(ConfigurationError, match="FENGCHAO_MASTER_KEY is not a valid") as caught:
        master_fernet(settings.model_copy(update={"master_key": SecretStr(bad)}))
    assert bad not in str(caught.value)
    path = settings.data_dir / MASTER_KEY_FILE
    path.parent.mkdir(parents=True)
    path.write_text(bad)
    with pytest.raises(ConfigurationError, match=r"master key file .* is not a valid") as caught:
        master_fernet(settings)
    assert bad not in str(caught.value)


def test_a_group_readable_master_key_file_is_warned_about(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    master_fernet(settings)
    path = settings.data_dir / MASTER_KEY_FILE
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        master_fernet(settings)
    assert "can be read by other users (mode 644)" in caplog.text


def test_another_master_key_cannot_read_the_secrets(database: Database, settings: Settings) -> None:
    issued = KeyStore(database, settings).create()
    other = KeyStore(
        database, settings.model_copy(update={"master_key": SecretStr(new_master_key())})
    )
    with pytest.raises(ConfigurationError, match="cannot be decrypted") as caught:
        other.secret(issued.api_key)
    assert issued.secret_key not in str(caught.value)


def test_the_master_key_file_appears_only_when_a_key_is_issued(
    database: Database, settings: Settings
) -> None:
    path = settings.data_dir / MASTER_KEY_FILE
    keys = KeyStore(database, settings)
    assert keys.list() == [] and keys.secret("fc-000000000000000000000000") is None
    with pytest.raises(UnknownKeyError):
        keys.revoke("fc-000000000000000000000000")
    assert not path.exists()
    issued = keys.create()
    assert path.exists()
    path.unlink()  # lost: the stored secrets cannot be read, and the error says why
    with pytest.raises(ConfigurationError, match=r"master key file .* is gone"):
        KeyStore(database, settings).secret(issued.api_key)


def test_a_broken_master_key_fails_when_the_store_is_built(
    database: Database, settings: Settings
) -> None:
    broken = settings.model_copy(update={"master_key": SecretStr("short")})
    with pytest.raises(ConfigurationError, match="FENGCHAO_MASTER_KEY is not a valid"):
        KeyStore(database, broken)
