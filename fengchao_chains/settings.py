"""Settings: environment (``FENGCHAO_*``) over an optional TOML config file over defaults.

Every setting is documented in ``docs/configuration.md`` (a test keeps the two in step).
Vendor credentials are read from each vendor's own standard variable (``OPENAI_API_KEY``,
``QIANFAN_AK``, ...) so existing shells and deployments work unchanged; they are
:class:`~pydantic.SecretStr` so they never print.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from fengchao_chains.errors import ConfigurationError

CONFIG_FILE_ENV = "FENGCHAO_CONFIG_FILE"
APP_NAME = "fengchao"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def default_config_file() -> Path:
    """Where the config file is looked for when ``FENGCHAO_CONFIG_FILE`` is not set."""
    return platformdirs.user_config_path(APP_NAME) / "config.toml"


def _vendor_env(name: str) -> Any:
    """A vendor setting read from the vendor's own standard env var ``name`` (no prefix), or
    from its lower-case name in the config file."""
    return Field(default=None, validation_alias=AliasChoices(name, name.lower()))


class Settings(BaseSettings):
    """All run-time settings of the library, the server and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix="FENGCHAO_",
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    # --- database -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (libpq URI or key=value string). Unset: embedded Postgres.",
    )
    database_schema: str = Field(
        default="fengchao", description="Schema that holds every table of this project."
    )
    database_pool_min_size: int = Field(default=1, ge=0)
    database_pool_max_size: int = Field(default=10, ge=1)
    database_connect_timeout: float = Field(default=10.0, gt=0)
    migration_lock_timeout: float = Field(
        default=120.0, gt=0, description="Seconds to wait for another process's migrations."
    )

    # --- files ----------------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=lambda: platformdirs.user_data_path(APP_NAME),
        description="Embedded database, uploads and other state.",
    )
    catalog_files: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Extra model-catalog TOML files, applied in order."
    )
    prompt_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Extra instruction directories (*.jinja), applied over the packaged library.",
    )

    # --- prompt rendering limits (library and client templates) ---------------------------
    prompt_max_chars: int = Field(
        default=200_000, ge=1_000, description="Longest rendered prompt, in characters."
    )
    prompt_render_timeout: float = Field(
        default=0.5, gt=0, description="Seconds one prompt may take to render."
    )

    # --- server ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # --- models ---------------------------------------------------------------------------
    default_model: str = Field(
        default="SmolLM2-135M-Instruct", description="Chat model used when a request names none."
    )
    embedding_model: str = Field(
        default="multilingual-e5-small", description="Embedding model for new knowledge bases."
    )

    # --- knowledge base -------------------------------------------------------------------
    knowledge_ef_search: int = Field(
        default=40,
        ge=10,
        le=1000,
        description="HNSW candidate list size per vector query (higher: better recall, slower).",
    )
    load_sample_news: bool = Field(
        default=True,
        description="Load the packaged sample news into an empty news_vector_store at serve.",
    )

    # --- gateway: authentication ----------------------------------------------------------
    auth_required: bool = Field(
        default=True,
        description="Require a key's token on chat routes (off only for a private sandbox).",
    )
    master_key: SecretStr | None = Field(
        default=None,
        description="Fernet key encrypting API secrets at rest; unset: <data_dir>/master.key.",
    )
    token_ttl_seconds: int = Field(
        default=1800, ge=60, le=7 * 86400, description="Lifetime of tokens from /aigc/token."
    )

    # --- gateway: sensitive words, async tasks, uploads, conversations ---------------------
    sensitive_word_files: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Extra word lists (one word per line) added to the packaged list.",
    )
    task_workers: int = Field(
        default=4, ge=1, le=256, description="Async chat tasks one server process runs at once."
    )
    task_retention_seconds: int = Field(
        default=86400, ge=60, description="How long a finished async task's result is kept."
    )
    task_lease_seconds: int = Field(
        default=120,
        ge=5,
        description="A running task whose worker stopped renewing it for this long is retried.",
    )
    upload_max_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="Largest accepted upload, per file."
    )
    upload_max_files: int = Field(default=10, ge=1, description="Files per upload request.")
    upload_suffixes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            ".txt",
            ".md",
            ".json",
            ".jsonl",
            ".csv",
            ".html",
            ".htm",
            ".pdf",
            ".docx",
        ],
        description="File types accepted by /aigc/uploadfiles/ (by suffix; content is checked).",
    )
    file_context_max_chars: int = Field(
        default=20000, ge=100, description="Characters of uploaded files put before a query."
    )
    upload_unclaimed_seconds: int = Field(
        default=86400, ge=60, description="Anonymous uploads no chat used are deleted after this."
    )
    conversation_retention_seconds: int = Field(
        default=30 * 86400, ge=60, description="Conversations idle this long are deleted."
    )
    conversation_max_messages: int = Field(
        default=40, ge=0, description="Stored messages of a request_id replayed to the model."
    )

    # --- gateway: per-key rate limits and budgets (gateway/limits.py, docs/limits.md) ------
    default_rpm: int | None = Field(
        default=None, ge=1, description="Requests per minute for keys without their own limits."
    )
    default_tpm: int | None = Field(
        default=None, ge=1, description="Tokens per minute for keys without their own limits."
    )
    limits_default_max_tokens: int = Field(
        default=1024,
        ge=1,
        description="Completion tokens reserved against TPM and budget when max_tokens is unset.",
    )
    limits_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long a process caches the table of per-key limits."
    )
    usd_cny_rate: float = Field(
        default=7.2,
        gt=0,
        description="CNY per USD, to charge a cost to a budget in the other unit.",
    )
    # usage accounting (issue 8, gateway/usage.py)
    usage_flush_seconds: float = Field(
        default=0.5, gt=0, le=60, description="How often buffered usage records are written."
    )
    # key and verified-token cache (issue 8 performance, gateway/key_cache.py, docs/auth.md)
    auth_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="How long a process trusts a cached key lookup (0: read it every request).",
    )
    # the vendors' connection pools (issue 8 performance, llms/_http_clients.py)
    vendor_max_connections: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Connections to vendors one process may hold open (a stream holds one).",
    )
    stream_coalescing: bool = Field(
        default=True,
        description="Relay a vendor's text deltas that arrive in one network read as one"
        " delta (off: one delta per vendor event).",
    )

    # --- vendor credentials (standard env var names, no FENGCHAO_ prefix) ------------------
    openai_api_key: SecretStr | None = _vendor_env("OPENAI_API_KEY")
    openai_base_url: str | None = _vendor_env("OPENAI_BASE_URL")
    zhipuai_api_key: SecretStr | None = _vendor_env("ZHIPUAI_API_KEY")
    zhipuai_base_url: str | None = _vendor_env("ZHIPUAI_BASE_URL")
    qianfan_ak: SecretStr | None = _vendor_env("QIANFAN_AK")
    qianfan_sk: SecretStr | None = _vendor_env("QIANFAN_SK")
    qianfan_base_url: str | None = _vendor_env("QIANFAN_BASE_URL")
    anthropic_api_key: SecretStr | None = _vendor_env("ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = _vendor_env("ANTHROPIC_BASE_URL")
    volc_accesskey: SecretStr | None = _vendor_env("VOLC_ACCESSKEY")
    volc_secretkey: SecretStr | None = _vendor_env("VOLC_SECRETKEY")
    volc_maas_base_url: str | None = _vendor_env("VOLC_MAAS_BASE_URL")
    ark_api_key: SecretStr | None = _vendor_env("ARK_API_KEY")
    ark_base_url: str | None = _vendor_env("ARK_BASE_URL")
    moonshot_api_key: SecretStr | None = _vendor_env("MOONSHOT_API_KEY")
    moonshot_base_url: str | None = _vendor_env("MOONSHOT_BASE_URL")
    sensenova_access_key_id: SecretStr | None = _vendor_env("SENSENOVA_ACCESS_KEY_ID")
    sensenova_secret_access_key: SecretStr | None = _vendor_env("SENSENOVA_SECRET_ACCESS_KEY")
    sensenova_api_base: str | None = _vendor_env("SENSENOVA_API_BASE")
    internlm_api_key: SecretStr | None = _vendor_env("INTERNLM_API_KEY")
    internlm_base_url: str | None = _vendor_env("INTERNLM_BASE_URL")
    tgi_base_url: str | None = _vendor_env("TGI_BASE_URL")
    hf_token: SecretStr | None = _vendor_env("HF_TOKEN")

    @field_validator("database_schema")
    @classmethod
    def _schema_is_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError("must be a lower-case SQL identifier (letters, digits, underscore)")
        return value

    @field_validator(
        "catalog_files", "prompt_dirs", "sensitive_word_files", "upload_suffixes", mode="before"
    )
    @classmethod
    def _split_path_list(cls, value: Any) -> Any:
        """From the environment: a JSON list, or paths joined with ``:`` like ``PATH``."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("is neither a JSON list nor ':'-separated paths") from None
        return [part for part in value.split(os.pathsep) if part]

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = config_file_in_use()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def config_file_in_use() -> Path | None:
    """The config file settings are read from, if any; an explicitly named file must exist
    and parse."""
    explicit = os.environ.get(CONFIG_FILE_ENV)
    path = Path(explicit).expanduser() if explicit else default_config_file()
    if not path.exists():
        if explicit:
            raise ConfigurationError(f"config file {path} ({CONFIG_FILE_ENV}) does not exist")
        return None
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None
    return path


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, naming the field path and never echoing the input value
    (which may be a secret)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "(root)"
        problems.append(f"{location}: {error['msg']}")
    return f"{source}: " + "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation failures into one :class:`ConfigurationError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(describe_validation_error(exc, "invalid settings")) from None
    except SettingsError as exc:  # a value pydantic-settings could not even decode
        raise ConfigurationError(f"invalid settings: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests and embedders pass their own instead)."""
    return load_settings()
