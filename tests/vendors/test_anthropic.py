"""The Anthropic Messages chat model against the fake Anthropic server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fengchao_chains import get_chat_model
from fengchao_chains.llms._http import ResponseMeta
from fengchao_chains.llms.anthropic import ChatAnthropicMessages
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    VendorConnectionError,
    VendorError,
    VendorTimeoutError,
)
from fengchao_chains.settings import load_settings
from fengchao_chains.testing.fakes._common import Fault, sse_response
from fengchao_chains.testing.fakes.anthropic import FakeAnthropic, event
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.checks import assert_four_modes, assert_no_secret, summed

ANTHROPIC_MODELS = ["claude-3-opus-20240229", "claude-3-sonnet-20240229"]
KEY = "sk-ant-test"


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(anthropic_server: tuple[FakeAnthropic, str]) -> Iterator[FakeAnthropic]:
    served, _ = anthropic_server
    served.clear_faults()
    served.requests.clear()
    served.context_window = 200_000
    yield served
    served.clear_faults()
    served.context_window = 200_000


@pytest.fixture
def url(anthropic_server: tuple[FakeAnthropic, str]) -> str:
    return anthropic_server[1]


@pytest.fixture
def model(url: str, fake: FakeAnthropic) -> ChatAnthropicMessages:
    return ChatAnthropicMessages(
        model="claude-3-opus-20240229", api_key=KEY, base_url=url, max_retries=2
    )


# --------------------------------------------------------------------------- catalog, modes


@pytest.mark.parametrize("model_id", ANTHROPIC_MODELS)
async def test_every_catalog_model_in_all_four_modes(
    model_id: str, url: str, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    chat = get_chat_model(model_id, settings=load_settings())
    assert isinstance(chat, ChatAnthropicMessages)
    await assert_four_modes(chat, expected_model=model_id)
    request = fake.last_request
    assert request["path"] == "/v1/messages"
    assert request["body"]["model"] == model_id
    assert request["body"]["max_tokens"] == 4096  # the card's max_output_token
    assert request["headers"]["x-api-key"] == KEY
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
    tuned = model.model_copy(
        update={
            "temperature": 0.3,
            "top_p": 0.9,
            "max_tokens": 50,
            "model_kwargs": {"top_k": 40, "metadata": {"user_id": "u-1"}},
        }
    )
    tuned.invoke([SystemMessage("be brief"), HumanMessage("hi", name="ann")], stop=["\n\n"])
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
    list(tuned.stream("hi", top_k=5, model="claude-3-sonnet-20240229"))
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


def test_max_tokens_and_stop_reach_the_vendor(model: ChatAnthropicMessages) -> None:
    cut = model.invoke("one two three four five six", max_tokens=3)
    assert cut.content == "Echo: one"
    assert cut.response_metadata["finish_reason"] == "max_tokens"
    assert cut.usage_metadata is not None and cut.usage_metadata["output_tokens"] == 3
    stopped = model.invoke("alpha beta gamma", stop=["beta"])
    assert stopped.content == "Echo: alpha"
    assert stopped.response_metadata["finish_reason"] == "stop_sequence"
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


def test_composes_in_a_chain_with_callbacks(model: ChatAnthropicMessages) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:  # type: ignore[override]
            self.tokens.append(token)

    handler = Tokens()
    chain = ChatPromptTemplate.from_messages([("system", "terse"), ("human", "{q}")]) | model
    streamed = "".join(
        str(c.content) for c in chain.stream({"q": "ping"}, config={"callbacks": [handler]})
    )
    assert streamed == "Echo: ping"
    assert "".join(handler.tokens) == "Echo: ping"
    assert [m.content for m in chain.batch([{"q": "a"}, {"q": "b"}])] == ["Echo: a", "Echo: b"]


async def test_concurrent_async_calls_share_the_pool(model: ChatAnthropicMessages) -> None:
    answers = await asyncio.gather(*(model.ainvoke(f"n{i}") for i in range(20)))
    assert [a.content for a in answers] == [f"Echo: n{i}" for i in range(20)]


# --------------------------------------------------------------------------- auth


def test_bad_key_is_an_authentication_error_without_leaking(url: str, fake: FakeAnthropic) -> None:
    secret = "sk-ant-this-is-very-secret-123"
    chat = ChatAnthropicMessages(model="claude-3-opus-20240229", api_key=secret, base_url=url)
    with pytest.raises(AuthenticationError) as caught:
        chat.invoke("hi")
    assert caught.value.status_code == 401
    assert caught.value.code == "authentication_error"
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert len(fake.requests) == 1  # never retried
    assert_no_secret(secret, chat, caught.value)


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


def test_rate_limit_is_retried_honouring_retry_after(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    fake.inject(Fault.RATE_LIMITED, times=2, retry_after=0.3)
    started = time.monotonic()
    assert model.invoke("hi").content == "Echo: hi"
    assert time.monotonic() - started >= 0.6
    assert len(fake.requests) == 3


def test_rate_limit_gives_up_after_max_retries(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    fake.inject(Fault.RATE_LIMITED, times=5, retry_after=0)
    with pytest.raises(RateLimitError) as caught:
        model.invoke("hi")
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_error"
    assert caught.value.retry_after == 0
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert len(fake.requests) == 3  # first try + max_retries


async def test_server_errors_are_retried_async(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    fake.inject(Fault.SERVER_ERROR, times=1)
    assert (await model.ainvoke("hi")).content == "Echo: hi"
    fake.inject(Fault.SERVER_ERROR, times=3)
    with pytest.raises(UpstreamError) as caught:
        await model.ainvoke("hi")
    assert caught.value.status_code == 500
    assert caught.value.code == "api_error"


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
    ("fault", "error", "code"),
    [
        (Fault.UNAUTHORIZED, AuthenticationError, "authentication_error"),
        (Fault.TOKEN_EXPIRED, AuthenticationError, "authentication_error"),
        (Fault.CONTEXT_TOO_LONG, ContextTooLongError, "invalid_request_error"),
        (Fault.CONTENT_FILTERED, ContentFilteredError, "invalid_request_error"),
    ],
)
def test_errors_map_to_the_tree_without_retry(
    model: ChatAnthropicMessages,
    fake: FakeAnthropic,
    fault: Fault,
    error: type[VendorError],
    code: str,
) -> None:
    fake.inject(fault)
    with pytest.raises(error) as caught:
        model.invoke("hi")
    assert caught.value.code == code
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert len(fake.requests) == 1


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


def test_langchain_exception_classes_catch_ours(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    from langchain_core.exceptions import ContextOverflowError, ModelAuthenticationError

    fake.inject(Fault.UNAUTHORIZED)
    with pytest.raises(ModelAuthenticationError):
        model.invoke("hi")
    fake.inject(Fault.CONTEXT_TOO_LONG)
    with pytest.raises(ContextOverflowError):
        model.invoke("hi")


def test_prompt_over_the_context_window(model: ChatAnthropicMessages, fake: FakeAnthropic) -> None:
    fake.context_window = 20
    with pytest.raises(ContextTooLongError) as caught:
        model.invoke("word " * 50)
    assert "prompt is too long" in caught.value.message
    with pytest.raises(ContextTooLongError):
        list(model.stream("word " * 50))


def test_timeout_is_a_timeout_error(model: ChatAnthropicMessages, fake: FakeAnthropic) -> None:
    fake.inject(Fault.SLOW, times=3, delay=1.0)
    quick = model.model_copy(update={"timeout": 0.2, "max_retries": 0})
    with pytest.raises(VendorTimeoutError):
        quick.invoke("hi")


def test_error_event_mid_stream_is_raised_not_retried(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    fake.inject(Fault.MID_STREAM_ERROR)
    received: list[AIMessageChunk] = []
    with pytest.raises(UpstreamError) as caught:
        for chunk in model.stream("one two three four"):
            received.append(chunk)
    assert "".join(str(c.content) for c in received) == "Echo:"
    assert caught.value.code == "overloaded_error"
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert not any(c.usage_metadata for c in received)
    assert len(fake.requests) == 1


async def test_error_event_mid_stream_async(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    fake.inject(Fault.MID_STREAM_ERROR, after_chunks=0)
    with pytest.raises(UpstreamError, match="Overloaded"):
        async for _ in model.astream("one two three four"):
            pass
    assert len(fake.requests) == 1


async def test_cut_stream_is_a_connection_error_not_retried(
    model: ChatAnthropicMessages, fake: FakeAnthropic
) -> None:
    fake.inject(Fault.CUT_STREAM)
    with pytest.raises(VendorConnectionError):
        async for _ in model.astream("one two three four"):
            pass
    assert len(fake.requests) == 1


@pytest.mark.parametrize("overloaded", [True, False])
async def test_stream_is_retried_before_the_first_byte(
    model: ChatAnthropicMessages, fake: FakeAnthropic, overloaded: bool
) -> None:
    if overloaded:
        fake.overload()
    else:
        fake.inject(Fault.RATE_LIMITED, retry_after=0)
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
