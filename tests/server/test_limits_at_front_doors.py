"""Rate limits and budgets at every front door of a started app: refused with HTTP 429 and
Retry-After before any work, other keys untouched, and each admitted request's reservation
settled to exactly the tokens the model used."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

from fengchao_chains.server.metering import estimate_chat_prompt
from fengchao_chains.settings import Settings
from tests.server.conftest import Server


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No caching of the limits table: a limit set by the test applies to the next request."""
    return settings.model_copy(update={"limits_cache_seconds": 0})


pytestmark = pytest.mark.usefixtures("same_minute")


def api_key(server: Server, name: str = "first") -> str:
    return next(info.api_key for info in server.runtime.keys.list() if info.name == name)


def window_tokens(server: Server, name: str = "first") -> int:
    return server.runtime.limits.status(api_key(server, name)).tokens


def test_aigc_over_rpm_is_429_with_retry_after_in_every_mode(server: Server) -> None:
    server.runtime.limits.set(api_key(server), rpm=2)
    assert server.chat().json()["status"] == 200
    assert server.chat(mode="async").json()["status"] == 200
    for mode in ("invoke", "stream", "async"):
        refused = server.chat(mode=mode)
        assert refused.status_code == 429, refused.text
        body = refused.json()
        assert body["status"] == 429 and "per minute" in body["msg"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    deadline = time.monotonic() + 10  # the admitted async task calls the model in a worker
    while len(server.openai.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    calls = len(server.openai.requests)
    assert calls == 2  # the invoke and the async task: nothing refused reached the model
    assert server.chat(token=server.other_token).json()["status"] == 200  # its own key
    assert len(server.openai.requests) == calls + 1


def test_aigc_reservations_settle_to_the_tokens_used(server: Server) -> None:
    server.runtime.limits.set(api_key(server), tpm=100_000)
    invoked = server.chat(query="第一个问题", max_tokens=512).json()
    assert window_tokens(server) == invoked["usage"]["total_tokens"] > 0
    chunks = server.stream(query="第二个问题", max_tokens=512)
    streamed = chunks[-1]["usage"]["total_tokens"]
    assert streamed > 0
    assert window_tokens(server) == invoked["usage"]["total_tokens"] + streamed


def test_an_async_task_is_settled_by_the_worker_that_ran_it(server: Server) -> None:
    server.runtime.limits.set(api_key(server), tpm=100_000)
    task_id = server.chat(mode="async", max_tokens=800).json()["choices"][0]["message"]["content"]
    answer: dict[str, Any] = {}
    for _ in range(300):
        answer = server.chat(mode="async_result", task_id=task_id, query=None).json()
        if answer["status"] != 6602:
            break
        time.sleep(0.05)
    assert answer["status"] == 200
    # reserved at submission (prompt estimate + 800): only the worker's settling brings the
    # window down to the answer's real usage
    for _ in range(100):  # the worker settles right after storing the answer
        if window_tokens(server) == answer["usage"]["total_tokens"]:
            break
        time.sleep(0.05)
    assert window_tokens(server) == answer["usage"]["total_tokens"]


def test_a_request_bigger_than_the_tpm_is_refused_without_retry(server: Server) -> None:
    server.runtime.limits.set(api_key(server), tpm=2000)
    refused = server.chat(max_tokens=5000)
    assert refused.status_code == 429
    assert refused.headers["x-should-retry"] == "false"
    assert "max_tokens" in refused.json()["msg"]
    assert server.chat(max_tokens=20).json()["status"] == 200


def test_a_spent_budget_refuses_until_the_period_ends(server: Server) -> None:
    one = Decimal(str(server.chat(max_tokens=10).json()["usage"]["cost"]))  # USD
    budget = one * 4
    server.runtime.limits.set(api_key(server), budget=budget, unit="USD")
    answered = 0
    for _ in range(10):
        response = server.chat(max_tokens=10)
        if response.status_code == 429:
            break
        answered += 1
    assert response.status_code == 429 and "budget" in response.json()["msg"]
    assert answered >= 1
    spent = server.runtime.limits.status(api_key(server)).spent
    assert spent is not None
    assert abs(spent - one * answered) < Decimal("1e-12")  # settled to the real cost
    assert spent <= budget + Decimal("1e-12")  # never over


def test_langserve_over_rpm_is_429_and_settles_to_the_answers_usage(server: Server) -> None:
    server.runtime.limits.set(api_key(server), rpm=2, tpm=100_000)
    body = {"input": {"model": "gpt-3.5-turbo", "query": "你好", "max_tokens": 300}}
    answer = server.client.post("/chat/invoke", json=body, headers=server.headers())
    assert answer.status_code == 200, answer.text
    usage = answer.json()["output"]["usage_metadata"]
    assert window_tokens(server) == usage["total_tokens"]
    batch = {"inputs": [body["input"], body["input"]]}
    assert (
        server.client.post("/chat/batch", json=batch, headers=server.headers()).status_code == 200
    )
    assert window_tokens(server) == 3 * usage["total_tokens"]
    refused = server.client.post("/chat/invoke", json=body, headers=server.headers())
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "per minute" in refused.text


def test_v1_over_rpm_is_openais_429_and_settles_to_the_answers_usage(server: Server) -> None:
    server.runtime.limits.set(api_key(server), rpm=2, tpm=100_000)
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "你好"}]}
    answer = server.client.post("/v1/chat/completions", json=body, headers=server.headers())
    assert answer.status_code == 200, answer.text
    assert window_tokens(server) == answer.json()["usage"]["total_tokens"]
    stream = body | {"stream": True, "stream_options": {"include_usage": True}}
    with server.client.stream(
        "POST", "/v1/chat/completions", json=stream, headers=server.headers()
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    streamed = json.loads(lines[-1].removeprefix("data: "))["usage"]["total_tokens"]
    assert window_tokens(server) == answer.json()["usage"]["total_tokens"] + streamed
    refused = server.client.post("/v1/chat/completions", json=body, headers=server.headers())
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_langserve_batch_reserves_the_default_allowance_for_each_input(server: Server) -> None:
    chat = {"model": "gpt-3.5-turbo", "query": "你好"}
    prompt = estimate_chat_prompt(server.runtime, chat)
    allowance = server.runtime.settings.limits_default_max_tokens
    # three prompts and ONE default allowance would fit; three prompts and three do not
    server.runtime.limits.set(api_key(server), tpm=3 * prompt + allowance + 100)
    three = {"inputs": [chat, chat, chat]}
    refused = server.client.post("/chat/batch", json=three, headers=server.headers())
    assert refused.status_code == 429 and "per minute" in refused.text
    one = server.client.post("/chat/batch", json={"inputs": [chat]}, headers=server.headers())
    assert one.status_code == 200, one.text
