from __future__ import annotations

import re
from pathlib import Path

import pytest

from fengchao_chains.errors import ConfigurationError
from fengchao_chains.settings import Settings, load_settings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_env_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FENGCHAO_PORT", "9001")
    monkeypatch.setenv("FENGCHAO_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.port == 9001
    assert settings.log_level == "DEBUG"
    assert settings.host == "127.0.0.1"
    assert settings.database_url is None
    assert settings.uses_embedded_database


def test_vendor_credentials_use_standard_names_and_never_print(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-very-secret")
    monkeypatch.setenv("QIANFAN_AK", "ak-123")
    monkeypatch.setenv("QIANFAN_SK", "sk-456-secret")
    monkeypatch.setenv("FENGCHAO_DATABASE_URL", "postgresql://u:pw-secret@db/x")
    settings = load_settings()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-live-very-secret"
    assert settings.qianfan_sk is not None
    assert settings.qianfan_sk.get_secret_value() == "sk-456-secret"
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in ("sk-live-very-secret", "sk-456-secret", "pw-secret"):
        assert secret not in shown


def test_config_file_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'port = 7000\nhost = "10.1.2.3"\nanthropic_api_key = "from-file"\n', encoding="utf-8"
    )
    monkeypatch.setenv("FENGCHAO_CONFIG_FILE", str(config))
    monkeypatch.setenv("FENGCHAO_PORT", "7100")
    settings = load_settings()
    assert settings.port == 7100
    assert settings.host == "10.1.2.3"
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "from-file"


def test_default_config_file_location_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config_dir = tmp_path / "xdg-config" / "fengchao"
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text("port = 7300\n", encoding="utf-8")
    assert load_settings().port == 7300


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("port = \n", r"config file .*config\.toml is not valid TOML"),
        ("prot = 1\n", r"invalid settings: prot: Extra inputs are not permitted"),
        ('port = "many"\n', r"invalid settings: port: Input should be a valid integer"),
        ('database_schema = "Robert\'); DROP"\n', r"database_schema: Value error"),
    ],
)
def test_bad_config_file_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str, expected: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(content, encoding="utf-8")
    monkeypatch.setenv("FENGCHAO_CONFIG_FILE", str(config))
    with pytest.raises(ConfigurationError, match=expected) as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_missing_explicit_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FENGCHAO_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigurationError, match=r"nope\.toml .* does not exist"):
        load_settings()


def test_invalid_value_never_echoes_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FENGCHAO_DATABASE_POOL_MAX_SIZE", "zero-secret-ish")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "database_pool_max_size" in str(info.value)
    assert "zero-secret-ish" not in str(info.value)


def test_sdk_base_url_variable_does_not_break_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The published fengchao SDK reads FENGCHAO_BASE_URL; clients and servers share shells.
    monkeypatch.setenv("FENGCHAO_BASE_URL", "http://127.0.0.1:8000")
    assert load_settings().port == 8000


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", text))
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env_name = (
            alias.choices[0]  # type: ignore[union-attr]
            if alias is not None
            else f"FENGCHAO_{name.upper()}"
        )
        assert env_name in documented, f"{env_name} is missing from docs/configuration.md"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["/a.toml", "/b.toml"]', [Path("/a.toml"), Path("/b.toml")]),
        ("/a.toml:/b.toml", [Path("/a.toml"), Path("/b.toml")]),
        ("/a.toml", [Path("/a.toml")]),
    ],
)
def test_catalog_files_from_env_as_json_or_path_list(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[Path]
) -> None:
    monkeypatch.setenv("FENGCHAO_CATALOG_FILES", value)
    assert load_settings().catalog_files == expected


def test_undecodable_list_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FENGCHAO_CATALOG_FILES", "[not json")
    with pytest.raises(ConfigurationError, match=r"catalog_files: .*neither a JSON list"):
        load_settings()
