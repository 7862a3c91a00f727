"""``/aigc/local_chat/`` and the LangServe ``/chat`` route: the embedded model answering
for real, a TGI-served Qwen model answering through the fake TGI, the SDK's exact request
and response shapes, its error codes, and the published fengchao SDK itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fengchao_chains.gateway.auth import issue_token
from fengchao_chains.server import create_app
from fengchao_chains.settings import Settings
from fengchao_chains.testing.fakes.tgi import FakeTGI
from fengchao_chains.testing.serve import serve_in_thread
from tests.processes import ServeProcess, clean_env, run_cli
from tests.sdk import run_sdk
from tests.server.conftest import sdk_body as aigc_body

pytest.importorskip("llama_cpp")

SMOL = "SmolLM2-135M-Instruct"
QWEN = "Qwen1.5-0.5B-Chat"
SDK_KEYS = {"request_id", "model", "status", "msg", "knowledge", "search", "agg", "choices"}


def sdk_body(**fields: Any) -> dict[str, Any]:
    """The SDK's 25 keys for the embedded model (tests/server/conftest.py has the rest)."""
    local = {
        "model": SMOL,
        "query": "Hello",
        "request_id": "a34e4840-e61f-11f1-b4b4-02fc00000001",
        "max_tokens": 8,
    }
    return aigc_body(**(local | fields))


@pytest.fixture(scope="module")
def tgi() -> Iterator[tuple[FakeTGI, str]]:
    fake = FakeTGI()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def client(settings: Settings, tgi: tuple[FakeTGI, str]) -> Iterator[TestClient]:
    app = create_app(settings=settings.model_copy(update={"tgi_base_url": tgi[1]}))
    with TestClient(app) as test_client:
        key = app.state.runtime.keys.create("local chat tests")
        test_client.headers["Authorization"] = issue_token(key.api_key, key.secret_key, 600)
        yield test_client


def stream_lines(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", "/aigc/local_chat/", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = "".join(response.iter_text())
    assert raw.isascii()  # ensure_ascii: the SDK decodes by its own charset rules
    assert "[DONE]" not in raw
    return [json.loads(line[len("data: ") :]) for line in raw.splitlines() if line]


def test_invoke_answers_with_the_embedded_model(client: TestClient) -> None:
    response = client.post("/aigc/local_chat/", json=sdk_body())
    assert response.status_code == 200
    payload = response.json()
    assert set(payload) >= SDK_KEYS
    assert payload["status"] == 200 and payload["msg"] == "执行成功"
    assert payload["model"] == SMOL
    assert payload["request_id"] == "a34e4840-e61f-11f1-b4b4-02fc00000001"
    (choice,) = payload["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    usage = payload["usage"]
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["cost"] == 0


def test_stream_sends_deltas_then_a_closing_chunk(client: TestClient) -> None:
    # without the sensitive-word guard, which may hold back the start of a listed word
    chunks = stream_lines(client, sdk_body(mode="stream", max_tokens=6, is_sensitive=False))
    assert len(chunks) >= 3
    for chunk in chunks:
        assert set(chunk) >= SDK_KEYS and chunk["status"] == 200
    *deltas, closing = chunks
    assert all(c["choices"][0]["finish_reason"] is None for c in deltas)
    assert [c["choices"][0]["index"] for c in deltas] == list(range(len(deltas)))
    assert closing["choices"][0]["message"]["content"] == ""
    assert closing["choices"][0]["finish_reason"] in ("stop", "length")
    assert (
        closing["usage"]["completion_tokens"] == 6
        or closing["choices"][0]["finish_reason"] == "stop"
    )
    assert all(c["usage"]["total_tokens"] == 0 for c in deltas)


def test_tgi_served_qwen_answers_through_the_prompt_library(
    client: TestClient, tgi: tuple[FakeTGI, str]
) -> None:
    fake, _ = tgi
    body = sdk_body(
        model=QWEN,
        query="你好",
        prompt="中译英",
        history=[{"role": "user", "content": "早"}, {"role": "assistant", "content": "Morning"}],
    )
    payload = client.post("/aigc/local_chat/", json=body).json()
    assert payload["status"] == 200
    sent = fake.last_request["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "你好" in sent[-1]["content"] and sent[-1]["content"] != "你好"  # rendered by 中译英
    content = payload["choices"][0]["message"]["content"]
    assert f"Echo: {sent[-1]['content']}".startswith(content)  # cut at max_tokens 8
    assert payload["choices"][0]["finish_reason"] == "length"
    assert payload["usage"]["prompt_tokens"] > 0
    assert fake.last_request["body"]["temperature"] == 0.8


def test_do_sample_false_is_greedy(client: TestClient, tgi: tuple[FakeTGI, str]) -> None:
    client.post("/aigc/local_chat/", json=sdk_body(model=QWEN, do_sample=False))
    assert tgi[0].last_request["body"]["temperature"] == 0


def test_a_model_failure_is_a_full_answer_with_its_status(
    client: TestClient, tgi: tuple[FakeTGI, str]
) -> None:
    fake, _ = tgi
    fake.inject("server_error", times=3)
    try:
        payload = client.post("/aigc/local_chat/", json=sdk_body(model=QWEN)).json()
    finally:
        fake.clear_faults()
    assert set(payload) >= SDK_KEYS
    assert payload["status"] == 424 and payload["choices"] == []
    assert payload["msg"].startswith("模型调用异常")


def test_a_failure_mid_stream_is_a_last_chunk_with_its_status(
    client: TestClient, tgi: tuple[FakeTGI, str]
) -> None:
    fake, _ = tgi
    fake.inject("mid_stream_error", after_chunks=2)
    try:
        body = sdk_body(model=QWEN, mode="stream", query="a b c d e", is_sensitive=False)
        chunks = stream_lines(client, body)
    finally:
        fake.clear_faults()
    *answered, failed = chunks
    assert [c["choices"][0]["message"]["content"] for c in answered] == ["Echo", ":"]
    assert set(failed) >= SDK_KEYS
    assert failed["status"] == 424 and failed["choices"] == []
    assert "模型调用异常" in failed["msg"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (sdk_body(model="no-such-model"), 440, "模型不存在"),
        (sdk_body(model="glm-4"), 442, "在线模型却使用了本地接口"),
        (sdk_body(query="  "), 443, "query不能为空"),
        (sdk_body(temperature=5), 445, "temperature"),
        (sdk_body(mode="sometimes"), 445, "mode"),
        (sdk_body(prompt="没有这个指令"), 445, "{{ query }}"),
        ({"query": "hi"}, 445, "model"),
        (sdk_body(history=[{"role": "robot", "content": "beep"}]), 445, "history[0]"),
        (sdk_body(prompt_fill=["not", "a", "table"]), 445, "prompt_fill"),
    ],
)
def test_bad_requests_get_the_documented_code(
    client: TestClient, body: dict[str, Any], status: int, words: str
) -> None:
    response = client.post("/aigc/local_chat/", json=body)
    assert response.status_code == status
    assert response.json()["status"] == status
    assert words in response.json()["msg"]


def test_body_that_is_not_json_is_445(client: TestClient) -> None:
    response = client.post("/aigc/local_chat/", content=b"{not json")
    assert response.status_code == 445


def test_langserve_chat_route_serves_the_default_model(client: TestClient) -> None:
    answer = client.post(
        "/chat/invoke",
        json={"input": {"query": "Hello", "max_tokens": 8}, "config": {}, "kwargs": {}},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"]["content"]
    assert client.get("/chat/playground/").status_code == 200
    schema = client.get("/chat/input_schema").json()
    assert {"query", "model", "prompt", "knowledge"} <= set(schema["properties"])


def test_published_sdk_chats_with_the_embedded_model(tmp_path: Any) -> None:
    env = clean_env(FENGCHAO_DATA_DIR=str(tmp_path / "data"))
    created = run_cli("keys", "create", "--json", env=env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    server = ServeProcess(env, ()).start()
    try:
        base_url = server.wait_ready()
        result = run_sdk(
            f"answer = client.chat({SMOL!r}, query='Hello', max_tokens=8)\n"
            f"chunks = list(client.chat({SMOL!r}, query='Hello', max_tokens=8, mode='stream'))\n"
            "result = {'status': answer.status, 'text': answer.data.choices[0].message.content,\n"
            "          'usage': answer.data.usage.model_dump(),\n"
            "          'stream': [c.status for c in chunks],\n"
            "          'streamed': ''.join(c.data.choices[0].message.content for c in chunks)}",
            base_url,
            timeout=300,
            api_key=key["api_key"],
            secret_key=key["secret_key"],
        )
    finally:
        server.stop(timeout=30)
    assert result["status"] == 200 and result["text"]
    assert 0 < result["usage"]["completion_tokens"] <= 8
    assert set(result["stream"]) == {200} and result["streamed"]
