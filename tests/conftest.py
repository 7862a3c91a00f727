"""Shared fixtures: one real PostgreSQL per test session, an isolated schema per test.

By default the session starts the embedded server (the same code path as production) in a
temporary directory. Set ``FENGCHAO_TEST_DATABASE_URL`` to run every test against an external
PostgreSQL with pgvector instead; each test still gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from fengchao_chains.db import Database
from fengchao_chains.db.embedded import EmbeddedPostgres
from fengchao_chains.settings import Settings, get_settings

TEST_DATABASE_URL_ENV = "FENGCHAO_TEST_DATABASE_URL"
_KEEP_ENV = {TEST_DATABASE_URL_ENV}
_VENDOR_ENV_PREFIXES = (
    "OPENAI_", "ZHIPUAI_", "QIANFAN_", "ANTHROPIC_", "VOLC_", "ARK_", "MOONSHOT_",
    "SENSENOVA_", "INTERNLM_", "TGI_", "HF_TOKEN",
)  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Tests never see the developer's settings, config file or vendor keys."""
    for name in list(os.environ):
        if (name.startswith("FENGCHAO_") and name not in _KEEP_ENV) or name.startswith(
            _VENDOR_ENV_PREFIXES
        ):
            monkeypatch.delenv(name)
    # a started app would otherwise embed the sample news in the background in every test;
    # the tests of that load turn it on
    monkeypatch.setenv("FENGCHAO_LOAD_SAMPLE_NEWS", "false")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server URL for the whole session: external if configured, else embedded."""
    external = os.environ.get(TEST_DATABASE_URL_ENV)
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("session-postgres"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def schema_name(postgres_url: str) -> Iterator[str]:
    """A fresh schema name, dropped (with everything in it) after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def settings(postgres_url: str, schema_name: str, tmp_path: Path) -> Settings:
    """Settings pointing at the session server and this test's own schema."""
    return Settings(
        database_url=postgres_url,  # pydantic coerces str to SecretStr
        database_schema=schema_name,
        data_dir=tmp_path / "data",
        database_pool_max_size=4,
    )


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    """A started, migrated database in this test's schema."""
    db = Database.start(settings)
    yield db
    db.close()
