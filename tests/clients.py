"""A live gateway for the client suites: ``fengchao serve`` as a real process, its key made
with ``fengchao keys create --json``, online models answered by a fake OpenAI on loopback.

The SDK, ``RemoteRunnable`` and the browser all talk to the server over real HTTP, the way
a deployment is used; only the vendor behind it is a fake (its replies are deterministic, so
answers can be asserted). The server runs in its own schema of the session's PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from fengchao_chains.gateway.auth import issue_token
from fengchao_chains.testing.fakes._common import echo
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.serve import serve_in_thread
from tests.processes import ServeProcess, run_cli

ONLINE_MODEL = "gpt-3.5-turbo"
PACED = 0.01
"""Seconds between the fake's stream events, so that each arrives in a read of its own (a
test that wants one burst sets the fake's ``event_interval`` to 0)."""
LOCAL_MODEL = "SmolLM2-135M-Instruct"
FAST_EMBEDDINGS = "use-multilingual-v3"
NEWS_STORE = "news_vector_store"
_FOREIGN_ENV_PREFIXES = (
    "FENGCHAO_", "OPENAI_", "ZHIPUAI_", "QIANFAN_", "ANTHROPIC_", "VOLC_", "ARK_", "MOONSHOT_",
    "SENSENOVA_", "INTERNLM_", "TGI_", "HF_TOKEN",
)  # fmt: skip


@dataclass
class Gateway:
    """A running server, the key its clients use, and the fake vendor behind it."""

    base_url: str
    api_key: str
    secret_key: str
    env: dict[str, str]
    server: ServeProcess
    openai: FakeOpenAI
    work_dir: Path

    def token(self, ttl_seconds: int = 600) -> str:
        """A token as the SDK signs it (and as ``/aigc/token`` gives it)."""
        return issue_token(self.api_key, self.secret_key, ttl_seconds)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``fengchao <args>`` against the same database, data dir and settings."""
        return run_cli(*args, env=self.env, timeout=timeout)

    def ingest(self, documents: Sequence[Mapping[str, str]], kb: str = NEWS_STORE) -> Any:
        """Load news records into ``kb`` with ``fengchao ingest`` and return its summary."""
        path = self.work_dir / f"news-{uuid.uuid4().hex[:8]}.jsonl"
        path.write_text(
            "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in documents),
            encoding="utf-8",
        )
        done = self.cli("ingest", str(path), "--kb", kb, "--json", "--no-progress")
        if done.returncode != 0:
            raise AssertionError(f"fengchao ingest failed:\n{done.stderr}")
        return json.loads(done.stdout)

    def log_since(self, mark: int) -> str:
        """The server's stderr lines logged after line ``mark`` (``len(server.lines)``)."""
        return "\n".join(self.server.lines[mark:])


def scrubbed_environ(**extra: str) -> dict[str, str]:
    """This process's environment without any fengchao or vendor setting, plus ``extra``.

    Module-scoped servers start before the per-test environment isolation of conftest, so
    they scrub for themselves: a developer's own key or config must not leak in.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV_PREFIXES)}
    env.update(extra)
    return env


@contextmanager
def running_gateway(postgres_url: str, work_dir: Path, **settings_env: str) -> Iterator[Gateway]:
    """Start a fake OpenAI, create a key with the CLI, then ``fengchao serve --port 0``;
    ``settings_env`` adds or overrides FENGCHAO_* variables. Everything is stopped, and the
    server's schema dropped, on exit."""
    schema = f"t_clients_{uuid.uuid4().hex[:12]}"
    openai = FakeOpenAI(event_interval=PACED)  # a token per read, as a vendor streams
    with serve_in_thread(openai.app) as openai_url:
        env = scrubbed_environ(
            FENGCHAO_DATABASE_URL=postgres_url,
            FENGCHAO_DATABASE_SCHEMA=schema,
            FENGCHAO_DATA_DIR=str(work_dir / "data"),
            FENGCHAO_EMBEDDING_MODEL=FAST_EMBEDDINGS,
            FENGCHAO_LOAD_SAMPLE_NEWS="false",
            FENGCHAO_LOG_LEVEL="INFO",
            XDG_CONFIG_HOME=str(work_dir / "xdg-config"),
            OPENAI_BASE_URL=f"{openai_url}/v1",
            OPENAI_API_KEY="sk-test",
            **settings_env,
        )
        server = ServeProcess(env)
        try:
            created = run_cli("keys", "create", "--name", "client-suite", "--json", env=env)
            if created.returncode != 0:
                raise AssertionError(f"fengchao keys create failed:\n{created.stderr}")
            key = json.loads(created.stdout)
            base_url = server.start().wait_ready()
            yield Gateway(
                base_url=base_url,
                api_key=key["api_key"],
                secret_key=key["secret_key"],
                env=env,
                server=server,
                openai=openai,
                work_dir=work_dir,
            )
        finally:
            try:
                if server.proc is not None:
                    server.stop(timeout=30)
            finally:
                server.kill()
                _drop_schema(postgres_url, schema)


def news_gateway(name: str, news: Sequence[Mapping[str, Any]]) -> tuple[Any, Any]:
    """Fixtures for a module of client tests, to be bound as ``gateway, plain_echo``: a
    module-scoped :func:`running_gateway` with ``news`` ingested into the news store
    (``name`` names its work directory), and an autouse reset of its fake OpenAI to echoing
    with no faults queued before every test."""

    @pytest.fixture(scope="module")
    def gateway(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
        with running_gateway(postgres_url, tmp_path_factory.mktemp(name)) as started:
            started.ingest(list(news))
            yield started

    @pytest.fixture(autouse=True)
    def plain_echo(gateway: Gateway) -> None:
        gateway.openai.reply = echo
        gateway.openai.clear_faults()

    return gateway, plain_echo


def _drop_schema(postgres_url: str, schema: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
