"""``/aigc/chat/`` and ``/aigc/local_chat/`` over the chat steps the LangServe chain runs too:
every mode, the chat semantics of the fengchao API and its error codes, against a fake OpenAI
on loopback."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from fengchao_chains.chains.chat import ChatInput
from fengchao_chains.gateway.auth import issue_token
from fengchao_chains.server import create_app
from fengchao_chains.server.aigc_chat import AigcChatBody
from fengchao_chains.settings import Settings
from tests.server.conftest import LOCAL, ONLINE, PACED, Server, sdk_body

SDK_KEYS = {
    "request_id",
    "model",
    "status",
    "msg",
    "knowledge",
    "search",
    "agg",
    "choices",
    "usage",
}
WORD = "赌博网站"  # in the packaged sensitive-word list


def test_invoke_answers_in_the_sdks_complete_shape(server: Server) -> None:
    response = server.chat(query="介绍一下北京", request_id="rid-1")
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) >= SDK_KEYS
    assert answer["status"] == 200 and answer["request_id"] == "rid-1"
    assert answer["choices"][0]["message"]["content"].startswith("Echo: ")
    assert "介绍一下北京" in answer["choices"][0]["message"]["content"]
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["cost"] > 0  # gpt-3.5-turbo has a price in the catalog
    assert answer["search"] == [] and answer["agg"] == [] and answer["knowledge"] == []


def test_the_library_default_system_prompt_is_used_when_absent(server: Server) -> None:
    server.chat(query="hi")
    system = server.last_messages()[0]
    assert system["role"] == "system"
    assert system["content"] == server.runtime.prompts.default.system
    server.chat(query="hi", system="你是诗人")
    assert server.last_messages()[0]["content"] == "你是诗人"


def test_prompt_id_custom_template_prompt_fill_and_history(server: Server) -> None:
    server.chat(query="今天天气很好", prompt="中译英")
    assert "今天天气很好" in server.last_messages()[-1]["content"]
    assert "中译英" in str(server.runtime.prompts["中译英"].card()) or True
    assert server.last_messages()[0]["content"] == server.runtime.prompts["中译英"].system

    server.chat(query="北京", prompt="请用{{ style }}介绍{{ query }}", prompt_fill={"style": "诗"})
    assert server.last_messages()[-1]["content"] == "请用诗介绍北京"

    history = [{"role": "user", "content": "第一问"}, {"role": "assistant", "content": "第一答"}]
    server.chat(query="第二问", history=history)
    sent = [(m["role"], m["content"]) for m in server.last_messages()[1:]]
    assert sent == [("user", "第一问"), ("assistant", "第一答"), ("user", "第二问")]


def test_a_sandboxed_template_cannot_reach_python(server: Server) -> None:
    response = server.chat(query="x", prompt="{{ ''.__class__.__mro__ }}{{ query }}")
    assert response.status_code == 445
    assert "Traceback" not in response.text


def test_sampling_parameters_reach_the_model(server: Server) -> None:
    server.chat(query="q", temperature=0.3, top_p=0.5, max_tokens=77)
    body = server.openai.last_request["body"]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.3, 0.5, 77)
    server.chat(query="q", do_sample=False, temperature=0.9)
    assert server.openai.last_request["body"]["temperature"] == 0


def test_request_id_continues_the_conversation_for_its_own_key_only(server: Server) -> None:
    server.chat(query="我叫小明", request_id="conv-1")
    server.chat(query="我叫什么", request_id="conv-1")
    sent = [(m["role"], m["content"]) for m in server.last_messages()[1:]]
    assert sent[0] == ("user", "我叫小明")
    assert sent[1][0] == "assistant" and "我叫小明" in sent[1][1]
    assert sent[2] == ("user", "我叫什么")

    server.chat(token=server.other_token, query="我叫什么", request_id="conv-1")
    assert [m["role"] for m in server.last_messages()] == ["system", "user"]


def test_stream_sends_deltas_then_a_closing_chunk_with_usage(server: Server) -> None:
    chunks = server.stream(query="讲一个故事")
    assert all(set(chunk) >= SDK_KEYS for chunk in chunks)
    *deltas, closing = chunks
    assert deltas and all(c["choices"][0]["finish_reason"] is None for c in deltas)
    assert [c["choices"][0]["index"] for c in deltas] == list(range(len(deltas)))
    text = "".join(c["choices"][0]["message"]["content"] for c in deltas)
    assert text.startswith("Echo: ") and "讲一个故事" in text
    assert closing["choices"][0]["finish_reason"] == "stop"
    assert closing["choices"][0]["message"]["content"] == ""
    assert closing["usage"]["completion_tokens"] > 0 and closing["usage"]["cost"] > 0


def test_a_request_id_the_sdk_did_not_send_is_the_model_runs_and_names_its_record(
    server: Server,
) -> None:
    ids = [server.chat(query="hi").json()["request_id"], server.stream(query="hi")[0]["request_id"]]
    server.runtime.usage.flush()
    with server.runtime.database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT run_id, request_id FROM usage_events WHERE request_id = ANY(%s) ORDER BY id",
            (ids,),
        ).fetchall()
    assert [str(run_id) for run_id, _ in rows] == ids == [request_id for _, request_id in rows]
    assert len(set(ids)) == 2


def test_response_format_json_asks_for_json_and_strips_fences(server: Server) -> None:
    server.openai.reply = lambda text: '```json\n{"城市": "北京"}\n```'
    answer = server.chat(query="北京是哪个城市", response_format="json").json()
    assert answer["choices"][0]["message"]["content"] == '{"城市": "北京"}'
    assert "JSON" in server.last_messages()[0]["content"]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "path", "status"),
    [
        ({"model": "gpt-5-ultra"}, "/aigc/chat/", 440),
        ({"model": LOCAL}, "/aigc/chat/", 441),
        ({"model": ONLINE}, "/aigc/local_chat/", 442),
        ({"query": "   "}, "/aigc/chat/", 443),
        ({"knowledge": "no_such_kb"}, "/aigc/chat/", 444),
        ({"temperature": 9}, "/aigc/chat/", 445),
        ({"mode": "sometimes"}, "/aigc/chat/", 445),
        ({"prompt": "没有这个指令"}, "/aigc/chat/", 445),
        ({"prompt_fill": {"nope": 1}}, "/aigc/chat/", 445),
        ({"history": [{"role": "wizard", "content": "x"}]}, "/aigc/chat/", 445),
        ({"files": ["file-doesnotexist"]}, "/aigc/chat/", 445),
        ({"request_id": "a\u0001b"}, "/aigc/chat/", 445),
    ],
)
def test_bad_requests_get_the_documented_http_status(
    server: Server, fields: dict[str, Any], path: str, status: int
) -> None:
    response = server.chat(path=path, **fields)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["msg"]
    assert "Traceback" not in response.text


OUT_OF_RANGE = [
    {"top_k": 0},
    {"top_k": 51},
    {"threshold": -1},
    {"threshold": 2001},
    {"temperature": -0.1},
    {"temperature": 2.5},
    {"top_p": 0},
    {"top_p": 1.5},
    {"max_tokens": 0},
]
IN_RANGE = [
    {"top_k": 1, "threshold": 0, "temperature": 0, "top_p": 1, "max_tokens": 1},
    {"top_k": 50, "threshold": 2000, "temperature": 2, "top_p": 0.01, "max_tokens": 4096},
]


@pytest.mark.parametrize("fields", OUT_OF_RANGE + IN_RANGE, ids=str)
def test_the_body_checks_what_the_chains_input_checks_and_builds_the_same_input(
    fields: dict[str, Any],
) -> None:
    """/aigc validates its body once and builds the chain's input without validating it
    again: the body must refuse exactly what the input refuses, and make the same input."""
    raw = json.dumps(sdk_body(**fields, files="file-1", system="s", history=[]))
    given = {k: v for k, v in json.loads(raw).items() if v is not None}
    given["files"] = [given["files"]]
    try:
        expected: ChatInput | None = ChatInput.model_validate(given)
    except ValidationError:
        expected = None
    if expected is None:
        with pytest.raises(ValidationError):
            AigcChatBody.model_validate_json(raw)
    else:
        made = AigcChatBody.model_validate_json(raw).chat_input()
        assert made == expected and made.model_fields_set == expected.model_fields_set


def test_tokens_are_required_and_checked(server: Server) -> None:
    assert server.client.post("/aigc/chat/", json=sdk_body()).status_code == 401
    bad = server.client.post("/aigc/chat/", json=sdk_body(), headers={"Authorization": "x.y.z"})
    assert bad.status_code == 401 and bad.json()["status"] == 401
    bearer = {"Authorization": f"Bearer {server.token}"}
    assert server.client.post("/aigc/chat/", json=sdk_body(), headers=bearer).status_code == 200


def test_a_vendor_failure_is_a_full_answer_with_its_status(server: Server) -> None:
    server.openai.inject("server_error", times=5)
    try:
        answer = server.chat(query="q").json()
    finally:
        server.openai.clear_faults()
    assert answer["status"] >= 500 and answer["choices"] == []
    assert set(answer) >= SDK_KEYS
    assert "sk-test" not in str(answer)


# --- sensitive words ----------------------------------------------------------------------


def test_sensitive_input_is_6601_or_masked(server: Server) -> None:
    refused = server.chat(query=f"哪里有{WORD}").json()
    assert refused["status"] == 6601 and refused["choices"] == []
    count = len(server.openai.requests)
    masked = server.chat(query=f"哪里有{WORD}", sensitive_replace=True).json()
    assert masked["status"] == 200
    assert WORD not in masked["choices"][0]["message"]["content"]
    assert "*" * len(WORD) in server.last_messages()[-1]["content"]
    assert len(server.openai.requests) == count + 1
    off = server.chat(query=f"哪里有{WORD}", is_sensitive=False).json()
    assert off["status"] == 200


def test_sensitive_output_is_6601_or_masked(server: Server) -> None:
    server.openai.reply = lambda text: f"可以去{WORD}看看"
    assert server.chat(query="推荐").json()["status"] == 6601
    masked = server.chat(query="推荐", sensitive_replace=True).json()
    assert masked["choices"][0]["message"]["content"] == "可以去" + "*" * len(WORD) + "看看"


def test_a_sensitive_word_split_across_stream_chunks_ends_the_stream(server: Server) -> None:
    # the fake streams one token per event, paced as a vendor paces them, so the word
    # arrives in pieces, in reads of their own
    server.openai.event_interval = PACED
    server.openai.reply = lambda text: f"first words then {WORD[:2]}{WORD[2:]} and more text"
    chunks = server.stream(query="推荐")
    assert chunks[-1]["status"] == 6601 and chunks[-1]["choices"] == []
    streamed = "".join(c["choices"][0]["message"]["content"] for c in chunks[:-1])
    # text before the word got out (less the window held back), nothing of the word did
    assert streamed and "first words then ".startswith(streamed)

    masked = server.stream(query="推荐", sensitive_replace=True)
    text = "".join(c["choices"][0]["message"]["content"] for c in masked)
    assert text == "first words then " + "*" * len(WORD) + " and more text"


def test_a_burst_is_one_line_and_a_paced_stream_a_line_per_token(server: Server) -> None:
    burst = server.stream(query="长城有多长")
    assert [c["choices"][0]["message"]["content"] for c in burst] == ["Echo: 长城有多长", ""]
    server.openai.event_interval = PACED
    paced = server.stream(query="长城有多长")
    pieces = [c["choices"][0]["message"]["content"] for c in paced]
    assert "".join(pieces) == "Echo: 长城有多长" and pieces[-1] == ""
    assert len(pieces) >= 7  # a line per token, as the guard's held-back window lets them out
    assert paced[-1]["usage"] == burst[-1]["usage"]


# --- async mode ---------------------------------------------------------------------------


def _wait_for_result(server: Server, task_id: str, token: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = server.chat(token=token, mode="async_result", task_id=task_id, query=None).json()
        if answer["status"] != 6602:
            return dict(answer)
        assert set(answer) >= SDK_KEYS and answer["msg"]
        time.sleep(0.1)
    raise AssertionError("the async task did not finish")


def test_async_then_async_result_for_the_owner_only(server: Server) -> None:
    submitted = server.chat(query="异步问题", mode="async").json()
    assert submitted["status"] == 200
    task_id = submitted["choices"][0]["message"]["content"]
    assert re.fullmatch(r"[0-9a-f]{32}", task_id)

    other = server.chat(token=server.other_token, mode="async_result", task_id=task_id, query=None)
    assert other.status_code == 445

    result = _wait_for_result(server, task_id)
    assert result["status"] == 200
    assert "异步问题" in result["choices"][0]["message"]["content"]
    assert result["usage"]["total_tokens"] > 0


def test_async_result_errors(server: Server) -> None:
    assert server.chat(mode="async_result", task_id=None, query=None).status_code == 445
    unknown = server.chat(mode="async_result", task_id="0" * 32, query=None)
    assert unknown.status_code == 445
    assert server.chat(mode="async", knowledge="no_such_kb").status_code == 444


def test_an_async_sensitive_answer_is_stored_with_6601(server: Server) -> None:
    server.openai.reply = lambda text: f"去{WORD}"
    task_id = server.chat(query="q", mode="async").json()["choices"][0]["message"]["content"]
    assert _wait_for_result(server, task_id)["status"] == 6601


def test_a_model_timeout_is_status_408(settings: Settings, fakes: Any, tmp_path: Path) -> None:
    """A vendor slower than the catalog's timeout: body status 408 (invoke and stream)."""
    openai, url, *_ = fakes
    override = tmp_path / "slow.toml"
    override.write_text('[models."gpt-3.5-turbo"]\ntimeout = 0.3\nmax_retries = 0\n')
    configured = settings.model_copy(
        update={
            "openai_base_url": f"{url}/v1",
            "openai_api_key": SecretStr("sk-test"),
            "catalog_files": [override],
        }
    )
    app = create_app(settings=configured)
    with TestClient(app) as client:
        key = app.state.runtime.keys.create("slow")
        headers = {"Authorization": issue_token(key.api_key, key.secret_key, 600)}
        openai.inject("slow", delay=2.0, times=3)
        try:
            answer = client.post("/aigc/chat/", json=sdk_body(), headers=headers).json()
            body = sdk_body(mode="stream")
            with client.stream("POST", "/aigc/chat/", json=body, headers=headers) as response:
                streamed = [
                    json.loads(line.removeprefix("data: "))
                    for line in response.iter_lines()
                    if line
                ]
        finally:
            openai.clear_faults()
    assert answer["status"] == 408 and answer["choices"] == []
    assert set(answer) >= SDK_KEYS
    assert streamed[-1]["status"] == 408
