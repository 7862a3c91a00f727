"""A started app over a real database, fake OpenAI and Moonshot servers on loopback, and
two API keys with their tokens."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from fengchao_chains.gateway.auth import issue_token
from fengchao_chains.ingest.run import ingest
from fengchao_chains.retrievers import NEWS_STORE, KnowledgeBaseRegistry
from fengchao_chains.runtime import Runtime
from fengchao_chains.server import create_app
from fengchao_chains.settings import Settings
from fengchao_chains.testing.fakes.moonshot import FakeMoonshot
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.serve import serve_in_thread

ONLINE = "gpt-3.5-turbo"
PACED = 0.08
"""Seconds between a paced fake stream's events: each arrives in a read of its own. The app,
the fake and the test share one process here, and with two test workers on two cores a
process can wait tens of milliseconds for a core: 20 ms once let two events meet in a read."""
LOCAL = "SmolLM2-135M-Instruct"


@dataclass
class Server:
    client: TestClient
    runtime: Runtime
    openai: FakeOpenAI
    moonshot: FakeMoonshot
    token: str
    other_token: str

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": token or self.token}

    def chat(self, token: str | None = None, path: str = "/aigc/chat/", **fields: Any) -> Any:
        return self.client.post(path, json=sdk_body(**fields), headers=self.headers(token))

    def stream(self, **fields: Any) -> list[dict[str, Any]]:
        body = sdk_body(mode="stream", **fields)
        with self.client.stream(
            "POST", "/aigc/chat/", json=body, headers=self.headers()
        ) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            raw = "".join(response.iter_text())
        assert raw.isascii()
        assert "[DONE]" not in raw
        return [json.loads(line.removeprefix("data: ")) for line in raw.splitlines() if line]

    def last_messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.openai.last_request["body"]["messages"]
        return messages


def sdk_body(**fields: Any) -> dict[str, Any]:
    """The 25 keys the SDK always sends (protocol doc 8.2), with its defaults."""
    body: dict[str, Any] = {
        "model": ONLINE,
        "query": "你好",
        "request_id": None,
        "system": None,
        "prompt": None,
        "prompt_fill": {},
        "is_sensitive": True,
        "sensitive_replace": False,
        "task_id": None,
        "history": [],
        "response_format": "text",
        "do_sample": True,
        "temperature": 0.8,
        "top_p": 0.75,
        "max_tokens": 256,
        "knowledge": None,
        "top_k": 5,
        "threshold": 500,
        "mode": "invoke",
        "files": None,
        "image": None,
        "video": None,
        "agg_models": None,
        "search_param": None,
    }
    return body | fields


@pytest.fixture
def same_minute() -> None:
    """Start a test well inside a minute: rate limits count in fixed one-minute windows, and
    a test that crossed into the next one would read that window's (empty) count."""
    now = datetime.now(UTC)
    second = now.second + now.microsecond / 1e6
    if second > 45:
        time.sleep(60.5 - second)


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, str, FakeMoonshot, str]]:
    openai, moonshot = FakeOpenAI(), FakeMoonshot()
    with serve_in_thread(openai.app) as openai_url, serve_in_thread(moonshot.app) as moon_url:
        yield openai, openai_url, moonshot, moon_url


@pytest.fixture
def server(
    settings: Settings, fakes: tuple[FakeOpenAI, str, FakeMoonshot, str]
) -> Iterator[Server]:
    openai, openai_url, moonshot, moonshot_url = fakes
    openai.reply = lambda text: f"Echo: {text}"
    openai.event_interval = 0.0  # each stream in one burst (a test may pace it)
    openai.requests.clear()
    configured = settings.model_copy(
        update={
            "openai_base_url": f"{openai_url}/v1",
            "openai_api_key": SecretStr("sk-test"),
            "moonshot_base_url": f"{moonshot_url}/v1",
            "moonshot_api_key": SecretStr("sk-test"),
            "embedding_model": "use-multilingual-v3",
        }
    )
    app = create_app(settings=configured)
    with TestClient(app) as client:
        runtime: Runtime = app.state.runtime
        first, second = runtime.keys.create("first"), runtime.keys.create("second")
        yield Server(
            client=client,
            runtime=runtime,
            openai=openai,
            moonshot=moonshot,
            token=issue_token(first.api_key, first.secret_key, 600),
            other_token=issue_token(second.api_key, second.secret_key, 600),
        )


NEWS = [
    {"id": "n1", "title": "北京冬奥会开幕", "content": "第二十四届冬奥会在北京国家体育场开幕。"},
    {"id": "n2", "title": "长江流域降雨", "content": "长江中下游地区迎来强降雨，发布防汛预警。"},
    {"id": "n3", "title": "新能源汽车销量", "content": "新能源汽车销量同比增长三成，充电桩加快。"},
]


@pytest.fixture
def news(server: Server, tmp_path: Path) -> Server:
    """The server with :data:`NEWS` ingested into the news store."""
    source = tmp_path / "news.jsonl"
    source.write_text("\n".join(json.dumps(item, ensure_ascii=False) for item in NEWS) + "\n")
    runtime = server.runtime
    kb = KnowledgeBaseRegistry(runtime.database).get(NEWS_STORE)
    report = ingest(
        [source], database=runtime.database, knowledge_base=kb, settings=runtime.settings
    )
    assert report.new == len(NEWS) and report.problems == 0
    return server
