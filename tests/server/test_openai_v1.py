"""``/v1`` over the app and a fake OpenAI on loopback: OpenAI's exact answer and stream
framing, what reaches the vendor, tools, JSON mode, refusals and vendor failures in
OpenAI's error shape, and the usage recorded for every call."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from fengchao_chains.catalog import get_chat_model
from fengchao_chains.chains.chat import JSON_INSTRUCTION
from fengchao_chains.server.openai_v1_extras import add_response_format, with_json_instruction
from fengchao_chains.server.openai_v1_wire import ChatCompletionRequest
from fengchao_chains.testing.fakes._common import Fault, count_tokens
from tests.server.conftest import ONLINE, PACED, Server

WORD = "赌博网站"  # in the packaged sensitive-word list
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}


def post(server: Server, token: str | None = None, **body: Any) -> Any:
    body = {"model": ONLINE, "messages": [{"role": "user", "content": "hi"}]} | body
    headers = {"Authorization": f"Bearer {token or server.token}"}
    return server.client.post("/v1/chat/completions", json=body, headers=headers)


def stream(server: Server, **body: Any) -> tuple[list[dict[str, Any]], str]:
    """The stream's JSON events and its raw text (which must end with [DONE] or an error)."""
    body = {"model": ONLINE, "messages": [{"role": "user", "content": "hi"}]} | body
    headers = {"Authorization": f"Bearer {server.token}"}
    with server.client.stream(
        "POST", "/v1/chat/completions", json=body | {"stream": True}, headers=headers
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in raw.split("\n\n") if line)
    return [json.loads(e) for e in events if e != "[DONE]"], raw


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


# --- answers -----------------------------------------------------------------------------


def test_answer_has_openai_shape_and_the_vendor_usage(server: Server) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}],
        },
    ]
    response = post(server, messages=messages, temperature=0.2, top_p=0.5, stop="\n\n", seed=7)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
    }
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == ONLINE and isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Echo: hello there", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    sent = server.openai.last_request["body"]
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    assert (sent["temperature"], sent["top_p"], sent["stop"]) == (0.2, 0.5, ["\n\n"])
    assert "seed" not in sent
    prompt = count_tokens("be brief\nhello there")
    completion = count_tokens("Echo: hello there")
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def test_max_completion_tokens_wins_and_cuts_the_answer(server: Server) -> None:
    body = post(server, max_tokens=50, max_completion_tokens=2).json()
    assert server.openai.last_request["body"]["max_tokens"] == 2
    assert body["choices"][0]["message"]["content"] == "Echo:"
    assert body["choices"][0]["finish_reason"] == "length"


def test_stream_with_usage_is_framed_as_openai_frames_it(server: Server) -> None:
    events, raw = stream(server, stream_options={"include_usage": True}, is_sensitive=False)
    assert raw.endswith("data: [DONE]\n\n")
    first, *deltas, finish, usage = events
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [d["choices"][0]["delta"]["content"] for d in deltas] == ["Echo: hi"]  # one burst
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 3,
        "total_tokens": 4,
    }
    assert all(e["usage"] is None for e in events[:-1])
    assert {e["id"] for e in events} == {first["id"]} and first["id"].startswith("chatcmpl-")
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == ONLINE for e in events)


def test_a_paced_stream_is_relayed_delta_by_delta(server: Server) -> None:
    server.openai.event_interval = PACED
    events, _ = stream(server, is_sensitive=False)
    deltas = [e["choices"][0]["delta"].get("content") for e in events[1:-1]]
    assert deltas == ["Echo", ":", " hi"]


def test_stream_without_usage_option_has_no_usage(server: Server) -> None:
    events, raw = stream(server)
    assert raw.endswith("data: [DONE]\n\n")
    assert all("usage" not in e for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == "Echo: hi"  # the sensitive-word guard may cut it differently
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


# --- tools and JSON ----------------------------------------------------------------------


def test_tool_call_answer_and_the_round_trip(server: Server) -> None:
    asked = [{"role": "user", "content": "weather in Paris for 3 days"}]
    body = post(server, messages=asked, tools=[WEATHER], tool_choice="auto").json()
    sent = server.openai.last_request["body"]
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "auto"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    args = {"city": "weather in Paris for 3 days", "days": 3}
    assert json.loads(call["function"]["arguments"]) == args

    answered = [
        *asked,
        choice["message"],
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21°C"},
    ]
    final = post(server, messages=answered, tools=[WEATHER]).json()
    assert final["choices"][0]["message"]["content"] == "Echo: sunny, 21°C"
    assert final["choices"][0]["finish_reason"] == "stop"
    resent = server.openai.last_request["body"]["messages"]
    assert resent[1]["role"] == "assistant" and resent[1]["content"] is None
    assert resent[1]["tool_calls"] == [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps(args)},
        }
    ]
    assert resent[2] == {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21°C"}


def test_named_tool_choice_and_streamed_tool_call_deltas(server: Server) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    events, raw = stream(server, tools=[CLOCK, WEATHER], tool_choice=choice)
    assert raw.endswith("data: [DONE]\n\n")
    calls = [c for e in events for c in e["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert all("id" not in c and "name" not in c["function"] for c in calls[1:])
    assert {c["index"] for c in calls} == {0}
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"city": "hi", "days": 1}
    assert len(calls) > 3
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tools_for_a_model_without_them_are_refused(server: Server) -> None:
    error = error_of(post(server, model="glm-4", tools=[WEATHER]), 400)
    assert error["param"] == "tools" and "glm-4" in error["message"]
    error = error_of(
        post(
            server,
            model="glm-4",
            response_format={"type": "json_schema", "json_schema": {"name": "x"}},
        ),
        400,
    )
    assert error["param"] == "response_format"


def test_json_response_format_is_passed_through(server: Server) -> None:
    body = post(server, response_format={"type": "json_object"}).json()
    assert server.openai.last_request["body"]["response_format"] == {"type": "json_object"}
    assert json.loads(body["choices"][0]["message"]["content"]) == {"answer": "Echo: hi"}
    schema = {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": schema, "strict": True},
    }
    body = post(server, response_format=response_format).json()
    assert server.openai.last_request["body"]["response_format"] == response_format
    assert json.loads(body["choices"][0]["message"]["content"]) == {"word": "hi"}


# --- refusals ----------------------------------------------------------------------------


def test_auth_failures_are_openai_401s(server: Server) -> None:
    error = error_of(post(server, token="not-a-token"), 401)
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    no_token = server.client.post("/v1/chat/completions", json={"model": ONLINE, "messages": []})
    assert error_of(no_token, 401)["code"] == "invalid_api_key"
    models = server.client.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"})
    assert error_of(models, 401)["code"] == "invalid_api_key"
    assert not server.openai.requests


def test_bad_requests_name_the_parameter(server: Server) -> None:
    unknown = error_of(post(server, model="gpt-3.5-turbo-1107"), 404)
    assert unknown["code"] == "model_not_found" and unknown["param"] == "model"
    assert "gpt-3.5-turbo-1106" in unknown["message"]  # the close match
    assert error_of(post(server, n=2), 400)["param"] == "n"
    assert error_of(post(server, temperature=5), 400)["param"] == "temperature"
    assert error_of(post(server, messages=[]), 400)["param"] == "messages"
    bad_role = [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]
    assert error_of(post(server, messages=bad_role), 400)["param"] == "messages[1]"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert "image_url" in error_of(post(server, messages=image), 400)["message"]
    raw = server.client.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers=server.headers(f"Bearer {server.token}"),
    )
    assert error_of(raw, 400)["message"] == "the body is not valid JSON"
    assert not server.openai.requests


def test_sensitive_input_is_refused_unless_turned_off(server: Server) -> None:
    asked = [{"role": "user", "content": f"哪里有{WORD}"}]
    error = error_of(post(server, messages=asked), 400)
    assert error["code"] == "sensitive_content" and WORD not in error["message"]
    assert not server.openai.requests
    assert post(server, messages=asked, is_sensitive=False).status_code == 200


def test_a_sensitive_answer_is_withheld_as_content_filter(server: Server) -> None:
    server.openai.reply = lambda text: f"推荐一个{WORD}给你"
    body = post(server).json()
    assert body["choices"][0]["message"]["content"] == ""
    assert body["choices"][0]["finish_reason"] == "content_filter"
    for interval, before_the_word in [(PACED, "推荐一个"), (0.0, "")]:
        # paced, the text before the word gets out; in one burst, the word's delta holds
        # all of it, and a delta with a hit is withheld whole
        server.openai.event_interval = interval
        events, raw = stream(server)
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        assert WORD not in text and text == before_the_word
        assert events[-1]["choices"][0]["finish_reason"] == "content_filter"
        assert raw.endswith("data: [DONE]\n\n")


# --- vendor failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (Fault.CONTEXT_TOO_LONG, 400, "context_length_exceeded"),
        (Fault.CONTENT_FILTERED, 400, "content_filter"),
        (Fault.UNAUTHORIZED, 502, "upstream_authentication"),
    ],
)
def test_vendor_refusals_map_to_openai_errors(
    server: Server, fault: Fault, status: int, code: str
) -> None:
    server.openai.inject(fault)
    error = error_of(post(server), status)
    assert error["code"] == code
    assert "sk-test" not in json.dumps(error)


def test_vendor_rate_limit_and_failure_after_retries(server: Server) -> None:
    server.openai.inject(Fault.RATE_LIMITED, times=3, retry_after=0)
    response = post(server)
    assert error_of(response, 429)["code"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] == "1"
    server.openai.inject(Fault.SERVER_ERROR, times=3)
    assert error_of(post(server), 502)["code"] == "upstream_error"


def test_a_stream_refused_before_any_text_is_an_http_error(server: Server) -> None:
    server.openai.inject(Fault.CONTEXT_TOO_LONG)
    response = post(server, stream=True)
    assert error_of(response, 400)["code"] == "context_length_exceeded"


def test_a_stream_failing_midway_ends_with_an_error_event(server: Server) -> None:
    server.openai.reply = lambda text: "one two three four five six"
    server.openai.inject(Fault.MID_STREAM_ERROR, after_chunks=3)
    events, raw = stream(server, is_sensitive=False)
    assert "[DONE]" not in raw
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "one two three"
    assert set(events[-1]) == {"error"} and events[-1]["error"]["type"] == "server_error"


# --- usage -------------------------------------------------------------------------------


def test_every_call_is_recorded_against_the_key_with_the_vendor_figures(server: Server) -> None:
    ids = [post(server).json()["id"]]
    ids.append(stream(server, stream_options={"include_usage": True})[0][0]["id"])
    ids.append(post(server, tools=[WEATHER]).json()["id"])
    server.runtime.usage.flush()
    with server.runtime.database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT model, front_door, streamed, status, prompt_tokens, completion_tokens,"
            " estimated, run_id, request_id FROM usage_events ORDER BY id"
        ).fetchall()
    arguments = json.dumps({"city": "hi", "days": 1}, separators=(",", ":"))
    assert [row[:-2] for row in rows] == [
        (ONLINE, "v1", False, "ok", 1, 3, False),
        (ONLINE, "v1", True, "ok", 1, 3, False),
        (ONLINE, "v1", False, "ok", 1, count_tokens(arguments), False),
    ]
    # a completion's id names its call's record: the model run's id, and the request's
    assert [f"chatcmpl-{row[-2].hex}" for row in rows] == ids == [row[-1] for row in rows]
    assert len(set(ids)) == 3


def test_json_mode_for_a_model_without_it_is_the_chain_instruction(server: Server) -> None:
    runtime = server.runtime
    zhipu = get_chat_model("glm-4", catalog=runtime.catalog, settings=runtime.settings)
    body = ChatCompletionRequest.model_validate(
        {"model": "glm-4", "messages": [{}], "response_format": {"type": "json_object"}}
    )
    kwargs: dict[str, Any] = {}
    assert add_response_format(body, zhipu, kwargs) is True and kwargs == {}
    instructed = with_json_instruction([SystemMessage("be brief"), HumanMessage("q")])
    assert instructed[0].text == f"be brief\n\n{JSON_INSTRUCTION}"
    assert with_json_instruction([HumanMessage("q")])[0].text == JSON_INSTRUCTION
