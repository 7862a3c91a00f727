from __future__ import annotations

import json

from fengchao_chains import __version__
from fengchao_chains.catalog import load_catalog
from fengchao_chains.db.migrate import discover_migrations
from tests.processes import clean_env, run_cli


def test_help_lists_the_commands() -> None:
    result = run_cli("--help", env=clean_env())
    assert result.returncode == 0
    for command in ("serve", "models", "db"):
        assert command in result.stdout


def test_version() -> None:
    result = run_cli("--version", env=clean_env())
    assert (result.returncode, result.stdout.strip()) == (0, f"fengchao-chains {__version__}")


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("sevre", env=clean_env())
    assert result.returncode == 2
    assert "No such command" in result.stderr
    assert result.stdout == ""


def test_models_table_and_json() -> None:
    table = run_cli("models", env=clean_env())
    assert table.returncode == 0, table.stderr
    for model_id in load_catalog():
        assert model_id in table.stdout
    as_json = run_cli("models", "--json", env=clean_env())
    rows = json.loads(as_json.stdout)
    assert [row["id"] for row in rows] == list(load_catalog())
    available = {row["id"]: row["available"] for row in rows}
    assert all(available.values())  # every vendor of the packaged catalog is implemented


def test_db_reports_external_database(postgres_url: str, schema_name: str) -> None:
    env = clean_env(FENGCHAO_DATABASE_URL=postgres_url, FENGCHAO_DATABASE_SCHEMA=schema_name)
    result = run_cli("db", env=env)
    assert result.returncode == 0, result.stderr
    assert "database:   external" in result.stdout
    assert "pgvector:   0.8" in result.stdout
    applied = len(discover_migrations())
    assert f"migrations: {applied} applied, 0 pending" in result.stdout
    assert f"schema:     {schema_name}" in result.stdout


def test_config_shows_effective_settings_without_secrets(tmp_path) -> None:
    config_file = tmp_path / "fengchao.toml"
    config_file.write_text('port = 9100\nmoonshot_api_key = "sk-moon-secret"\n', encoding="utf-8")
    env = clean_env(
        FENGCHAO_CONFIG_FILE=str(config_file),
        OPENAI_API_KEY="sk-openai-secret",
        FENGCHAO_DATABASE_URL="postgresql://u:db-secret@h/d",
    )
    result = run_cli("config", "--json", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["config_file"] == str(config_file)
    assert shown["port"] == 9100
    assert shown["openai_api_key"] == "(set)"
    assert shown["moonshot_api_key"] == "(set)"
    assert shown["database_url"] == "(set)"
    assert shown["anthropic_api_key"] is None
    text = run_cli("config", env=env).stdout
    for secret in ("sk-moon-secret", "sk-openai-secret", "db-secret"):
        assert secret not in result.stdout + text
