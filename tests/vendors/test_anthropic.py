"""The Anthropic Messages chat model against the fake Anthropic server: what only it does
(what every vendor shares is in ``test_contract.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fengchao_chains import get_chat_model
from fengchao_chains.llms._http import ResponseMeta
from fengchao_chains.llms.anthropic import ChatAnthropicMessages
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContextTooLongError,
    InvalidRequestError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.settings import load_settings
from fengchao_chains.testing.fakes._common import sse_response
from fengchao_chains.testing.fakes.anthropic import FakeAnthropic, event
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.checks import summed, tuned
from tests.vendors.harness import ANTHROPIC

ANTHROPIC_MODELS = ["claude-3-opus-20240229", "claude-3-sonnet-20240229"]
KEY = "sk-ant-test"


fake, url, model = ANTHROPIC.fixtures()


# --------------------------------------------------------------------------- catalog


@pytest.mark.parametrize("model_id", ANTHROPIC_MODELS)
def test_catalog_models_send_their_card_and_anthropics_headers(
    model_id: str, url: str, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    chat = get_chat_model(model_id, settings=load_settings())
    assert chat.invoke("hi").content == "Echo: hi"
    request = fake.last_request
    assert request["body"]["max_tokens"] == 4096  # the card's max_output_token
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request["headers"]


def test_factory_overrides_win(url: str, fake: FakeAnthropic) -> None:
    from fengchao_chains.catalog import load_catalog
    from fengchao_chains.llms.anthropic import create

    settings = load_settings()
    card = load_catalog(settings.catalog_files)["claude-3-sonnet-20240229"]
    chat = create(card, settings, api_key=KEY, base_url=url, max_tokens=7)
    assert (
        chat.invoke("one two three four five six seven eight").response_metadata["finish_reason"]
        == "max_tokens"
    )
    assert fake.last_request["body"]["max_tokens"] == 7


# --------------------------------------------------------------------------- the request


def test_payload_maps_standard_parameters(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    tuned_model = tuned(model, model_kwargs={"top_k": 40, "metadata": {"user_id": "u-1"}})
    tuned_model.invoke([SystemMessage("be brief"), HumanMessage("hi", name="ann")], stop=["\n\n"])
    body = fake.last_request["body"]
    assert body == {
        "model": "claude-3-opus-20240229",
        "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "stop_sequences": ["\n\n"],
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "u-1"},
    }
    list(tuned_model.stream("hi", top_k=5, model="claude-3-sonnet-20240229"))
    body = fake.last_request["body"]
    assert body["stream"] is True
    assert body["top_k"] == 5
    assert body["model"] == "claude-3-sonnet-20240229"


def test_max_tokens_defaults_to_1024(model: ChatAnthropicMessages, fake: FakeAnthropic) -> None:
    model.invoke("hi")
    assert fake.last_request["body"]["max_tokens"] == 1024
    model.model_copy(update={"max_tokens": None}).invoke("hi")
    assert fake.last_request["body"]["max_tokens"] == 1024


def test_consecutive_turns_are_merged_and_systems_joined(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    answer = model.invoke(
        [
            SystemMessage("rule one"),
            HumanMessage("first"),
            HumanMessage("second"),
            AIMessage("ok"),
            AIMessage("and more"),
            SystemMessage("rule two"),
            HumanMessage("third"),
        ]
    )
    assert answer.content == "Echo: third"
    body = fake.last_request["body"]
    assert body["system"] == "rule one\n\nrule two"
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "ok"}, {"type": "text", "text": "and more"}],
        },
        {"role": "user", "content": "third"},
    ]


def test_vendor_rules_on_turn_order_surface_as_invalid_request(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        model.invoke([AIMessage("hello, how can I help?"), HumanMessage("hi")])
    assert caught.value.status_code == 400
    assert "first message" in caught.value.message
    assert len(fake.requests) == 1


def test_the_stop_sequence_met_is_reported(model: ChatAnthropicMessages) -> None:
    stopped = model.invoke("alpha beta gamma", stop=["beta"])
    assert stopped.response_metadata["stop_sequence"] == "beta"
    streamed = summed(list(model.stream("alpha beta gamma", stop=["beta"])))
    assert streamed.response_metadata["finish_reason"] == "stop_sequence"
    assert streamed.response_metadata["stop_sequence"] == "beta"


# --------------------------------------------------------------------------- the answer


def test_answer_metadata(model: ChatAnthropicMessages) -> None:
    answer = model.invoke("hello there")
    assert answer.id is not None and answer.id.startswith("msg_")
    assert answer.response_metadata["request_id"].startswith("req_")
    assert answer.response_metadata["model_name"] == "claude-3-opus-20240229"
    assert answer.response_metadata["finish_reason"] == "end_turn"


def test_stream_combines_split_usage_exactly_once(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    question = [SystemMessage("you are terse"), HumanMessage("count these words please")]
    chunks = list(model.stream(question))
    with_usage = [c for c in chunks if c.usage_metadata]
    assert len(with_usage) == 1
    assert with_usage[0] is chunks[-1]
    total = summed(chunks)
    non_stream = model.invoke(question)
    assert total.usage_metadata == non_stream.usage_metadata
    # input tokens come from message_start, output tokens from message_delta
    assert total.usage_metadata is not None
    assert total.usage_metadata["input_tokens"] == 7  # system prompt counted too
    assert total.usage_metadata["output_tokens"] == 6
    assert total.content == non_stream.content
    assert total.response_metadata["finish_reason"] == "end_turn"
    assert total.response_metadata["request_id"].startswith("req_")
    assert total.id is not None and total.id.startswith("msg_")


# --------------------------------------------------------------------------- auth


def test_missing_key_fails_before_calling(fake: FakeAnthropic, url: str) -> None:
    chat = ChatAnthropicMessages(model="claude-3-opus-20240229", base_url=url)
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        chat.invoke("hi")
    assert fake.requests == []


def test_key_and_base_url_from_the_environment(
    url: str, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    chat = ChatAnthropicMessages(model="claude-3-opus-20240229")
    assert chat.invoke("hi").content == "Echo: hi"
    assert ChatAnthropicMessages(model="m", anthropic_api_key="k").api_key is not None


def test_fake_requires_key_and_version_headers(url: str, fake: FakeAnthropic) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    no_key = httpx.post(f"{url}/v1/messages", json=body, headers={"anthropic-version": "x"})
    assert no_key.status_code == 401
    assert no_key.json()["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }
    no_version = httpx.post(f"{url}/v1/messages", json=body, headers={"x-api-key": KEY})
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    no_max = httpx.post(
        f"{url}/v1/messages",
        json={k: v for k, v in body.items() if k != "max_tokens"},
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
    )
    assert no_max.status_code == 400
    assert no_max.headers["request-id"].startswith("req_")


# --------------------------------------------------------------------------- errors, retries


async def test_overloaded_529_is_retried(model: ChatAnthropicMessages, fake: FakeAnthropic) -> None:
    fake.overload(times=2)
    assert (await model.ainvoke("hi")).content == "Echo: hi"
    assert len(fake.requests) == 3
    fake.overload(times=3)
    with pytest.raises(UpstreamError) as caught:
        model.invoke("hi")
    assert caught.value.status_code == 529
    assert caught.value.code == "overloaded_error"
    assert caught.value.message == "Overloaded"


@pytest.mark.parametrize(
    ("status", "kind", "message", "error"),
    [
        (403, "permission_error", "Your API key does not have permission", AuthenticationError),
        (404, "not_found_error", "model: claude-9", InvalidRequestError),
        (413, "request_too_large", "Request exceeds the maximum size", InvalidRequestError),
        (400, "invalid_request_error", "prompt is too long: 9 tokens > 5", ContextTooLongError),
        (529, "overloaded_error", "Overloaded", UpstreamError),
        (418, "something_new", "teapot", InvalidRequestError),
    ],
)
def test_error_types_map_by_anthropic_type(
    model: ChatAnthropicMessages, status: int, kind: str, message: str, error: type[VendorError]
) -> None:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    meta = ResponseMeta(status, httpx.Headers({"request-id": "req_1"}), "req_1")
    mapped = model._error_from_response(status, body, meta)
    assert type(mapped) is error
    assert (mapped.status_code, mapped.code, mapped.request_id) == (status, kind, "req_1")
    assert mapped.message == message


async def test_overloaded_stream_is_retried_before_the_first_byte(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    fake.overload()
    text = "".join([str(c.content) async for c in model.astream("hi")])
    assert text == "Echo: hi"
    assert len(fake.requests) == 2


def test_stream_that_ends_without_message_stop_is_an_error() -> None:
    async def truncated(request: Request) -> Response:
        async def events() -> AsyncIterator[str]:
            start = {"id": "msg_1", "model": "m", "usage": {"input_tokens": 3}}
            yield event("message_start", {"type": "message_start", "message": start})
            delta = {"type": "text_delta", "text": "partial"}
            yield event("content_block_delta", {"type": "content_block_delta", "delta": delta})

        return sse_response(events())

    app = Starlette(routes=[Route("/v1/messages", truncated, methods=["POST"])])
    with serve_in_thread(app) as base:
        chat = ChatAnthropicMessages(model="m", api_key=KEY, base_url=base)
        received: list[str] = []
        with pytest.raises(UpstreamError, match="message_stop"):
            for chunk in chat.stream("hi"):
                received.append(str(chunk.content))
        assert received == ["partial"]


def test_errors_that_are_not_anthropic_bodies(model: ChatAnthropicMessages) -> None:
    meta = ResponseMeta(502, httpx.Headers(), None)
    gateway = model._error_from_response(502, "<html>Bad Gateway</html>", meta)
    assert type(gateway) is UpstreamError and gateway.status_code == 502
    odd = model._anthropic_error(None, {"type": "error"}, meta)
    assert type(odd) is UpstreamError and odd.status_code is None
