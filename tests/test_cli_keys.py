"""``fengchao keys``: create, list, revoke and master-key against real PostgreSQL; in-process
(typer's runner) except where the installed script's streams and exit codes matter."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet

from fengchao_chains.db import Database
from fengchao_chains.gateway.keys import KeyStore
from fengchao_chains.settings import Settings
from tests.processes import clean_env, ok, settings_env
from tests.processes import run_cli as run_installed
from tests.processes import run_cli_in_process as run_cli


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return settings_env(settings)


def test_master_key_prints_a_fresh_fernet_key() -> None:
    first = ok(run_cli("keys", "master-key", env=clean_env())).stdout.strip()
    second = ok(run_cli("keys", "master-key", env=clean_env())).stdout.strip()
    Fernet(first)  # a valid key, or this raises
    assert first != second


def test_create_list_revoke(env: dict[str, str], settings: Settings) -> None:
    created = ok(run_cli("keys", "create", "--name", "alice", "--admin", "--json", env=env))
    alice = json.loads(created.stdout)
    assert set(alice) == {"api_key", "secret_key", "name", "admin", "created_at"}
    assert alice["admin"] is True
    assert alice["name"] == "alice" and alice["api_key"].startswith("fc-")
    assert "keep the secret_key now" in created.stderr
    text = ok(run_cli("keys", "create", env=env))
    lines = dict(line.split(":", 1) for line in text.stdout.strip().splitlines())
    bob = {name: value.strip() for name, value in lines.items()}
    assert set(bob) == {"api_key", "secret_key"}

    database = Database.start(settings)
    try:
        store = KeyStore(database, settings)  # the same master key file: secrets readable
        assert store.secret(alice["api_key"]) == alice["secret_key"]
        assert store.secret(bob["api_key"]) == bob["secret_key"]
    finally:
        database.close()

    listed = ok(run_cli("keys", "list", "--json", env=env))
    rows = json.loads(listed.stdout)
    assert [row["api_key"] for row in rows] == [alice["api_key"], bob["api_key"]]
    assert [row["name"] for row in rows] == ["alice", None]
    assert all(set(row) == {"api_key", "name", "admin", "created_at", "revoked_at"} for row in rows)
    assert [row["admin"] for row in rows] == [True, False]
    assert alice["secret_key"] not in listed.stdout and bob["secret_key"] not in listed.stdout

    revoked = ok(run_cli("keys", "revoke", alice["api_key"], env=env))
    assert revoked.stdout.strip() == f"revoked {alice['api_key']}"
    rows = json.loads(ok(run_cli("keys", "list", "--json", env=env)).stdout)
    assert rows[0]["revoked_at"] is not None and rows[1]["revoked_at"] is None
    table = ok(run_cli("keys", "list", env=env)).stdout
    assert "2 keys" in table and alice["api_key"] in table and "alice" in table
    assert "revoked 20" in table and "active" in table
    assert alice["secret_key"] not in table


def test_revoking_an_unknown_key_is_one_error_line(env: dict[str, str]) -> None:
    result = run_cli("keys", "revoke", "fc-nope", env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: unknown API key 'fc-nope' (`fengchao keys list` shows the keys)\n"
    )


def test_a_bad_master_key_is_reported_without_quoting_it(env: dict[str, str]) -> None:
    bad = "definitely-not-a-fernet-key"
    result = run_cli("keys", "create", env=env | {"FENGCHAO_MASTER_KEY": bad})
    assert result.returncode == 1
    assert result.stderr.startswith("error: FENGCHAO_MASTER_KEY is not a valid Fernet key")
    assert bad not in result.stderr
    assert result.stdout == ""


def test_the_installed_command_prints_the_secret_on_stdout_only(env: dict[str, str]) -> None:
    debug = env | {"FENGCHAO_LOG_LEVEL": "DEBUG"}
    created = run_installed("keys", "create", "--json", env=debug)
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["secret_key"]
    assert "keep the secret_key now" in created.stderr
    assert secret not in created.stderr  # nor in any DEBUG log line
    unknown = run_installed("keys", "revoke", "fc-nope", env=env)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr.startswith("error: unknown API key")
