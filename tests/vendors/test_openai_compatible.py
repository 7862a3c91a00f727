"""The OpenAI-compatible chat model against the fake OpenAI server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate

from fengchao_chains import get_chat_model
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    RateLimitError,
    UpstreamError,
    VendorConnectionError,
    VendorTimeoutError,
)
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from tests.vendors.checks import (
    assert_four_modes,
    assert_no_secret,
    summed,
)

OPENAI_MODELS = [
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo-16k",
    "gpt-3.5-turbo-16k-0613",
]


@pytest.fixture
def model(openai_server: tuple[FakeOpenAI, str], openai_fake: FakeOpenAI) -> ChatOpenAICompatible:
    _, url = openai_server
    return ChatOpenAICompatible(
        model="gpt-3.5-turbo", api_key="sk-test", base_url=f"{url}/v1", max_retries=2
    )


@pytest.mark.parametrize("model_id", OPENAI_MODELS)
async def test_every_catalog_model_in_all_four_modes(
    model_id: str,
    openai_server: tuple[FakeOpenAI, str],
    openai_fake: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = openai_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/v1")
    from fengchao_chains.settings import load_settings

    chat = get_chat_model(model_id, settings=load_settings())
    await assert_four_modes(chat, expected_model=model_id)
    assert openai_fake.last_request["body"]["model"] == model_id


def test_payload_maps_standard_parameters(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    tuned = model.model_copy(
        update={
            "temperature": 0.3,
            "top_p": 0.9,
            "max_tokens": 50,
            "model_kwargs": {"seed": 7, "user": "u1"},
        }
    )
    tuned.invoke([SystemMessage("be brief"), HumanMessage("hi", name="ann")], stop=["\n\n"])
    body = openai_fake.last_request["body"]
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 50
    assert body["stop"] == ["\n\n"]
    assert body["seed"] == 7
    assert body["user"] == "u1"
    assert body["stream"] is False
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi", "name": "ann"},
    ]


def test_max_tokens_and_stop_reach_the_vendor(model: ChatOpenAICompatible) -> None:
    cut = model.invoke("one two three four five six", max_tokens=3)
    assert cut.response_metadata["finish_reason"] == "length"
    assert cut.usage_metadata is not None and cut.usage_metadata["output_tokens"] == 3
    stopped = model.invoke("alpha beta gamma", stop=["beta"])
    assert stopped.content == "Echo: alpha"


def test_stream_carries_usage_exactly_once(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    chunks = list(model.stream("count these words please"))
    with_usage = [c for c in chunks if c.usage_metadata]
    assert len(with_usage) == 1
    assert openai_fake.last_request["body"]["stream_options"] == {"include_usage": True}
    total = summed(chunks)
    non_stream = model.invoke("count these words please")
    assert total.usage_metadata == non_stream.usage_metadata
    assert total.content == non_stream.content
    assert total.response_metadata["finish_reason"] == "stop"


def test_composes_in_a_chain_with_callbacks(model: ChatOpenAICompatible) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:  # type: ignore[override]
            self.tokens.append(token)

    handler = Tokens()
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model
    streamed = "".join(
        str(c.content) for c in chain.stream({"q": "ping"}, config={"callbacks": [handler]})
    )
    assert streamed == "Echo: ping"
    assert "".join(handler.tokens) == "Echo: ping"
    assert [m.content for m in chain.batch([{"q": "a"}, {"q": "b"}])] == ["Echo: a", "Echo: b"]


def test_rate_limit_is_retried_honouring_retry_after(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    openai_fake.inject(Fault.RATE_LIMITED, times=2, retry_after=0.3)
    started = time.monotonic()
    assert model.invoke("hi").content == "Echo: hi"
    assert time.monotonic() - started >= 0.6
    assert len(openai_fake.requests) == 3


def test_rate_limit_gives_up_after_max_retries(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    openai_fake.inject(Fault.RATE_LIMITED, times=5, retry_after=0)
    with pytest.raises(RateLimitError) as caught:
        model.invoke("hi")
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert len(openai_fake.requests) == 3  # first try + max_retries


async def test_server_errors_are_retried_async(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    openai_fake.inject(Fault.SERVER_ERROR, times=1)
    assert (await model.ainvoke("hi")).content == "Echo: hi"
    openai_fake.inject(Fault.SERVER_ERROR, times=3)
    with pytest.raises(UpstreamError) as caught:
        await model.ainvoke("hi")
    assert caught.value.status_code == 500


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.UNAUTHORIZED, AuthenticationError),
        (Fault.CONTEXT_TOO_LONG, ContextTooLongError),
        (Fault.CONTENT_FILTERED, ContentFilteredError),
    ],
)
def test_errors_map_to_the_tree_without_retry(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI, fault: Fault, error: type[Exception]
) -> None:
    openai_fake.inject(fault)
    with pytest.raises(error):
        model.invoke("hi")
    assert len(openai_fake.requests) == 1


def test_bad_key_never_appears_in_errors_or_repr(
    openai_server: tuple[FakeOpenAI, str], openai_fake: FakeOpenAI
) -> None:
    _, url = openai_server
    secret = "sk-this-is-very-secret-123"
    chat = ChatOpenAICompatible(model="m", api_key=secret, base_url=f"{url}/v1")
    with pytest.raises(AuthenticationError) as caught:
        chat.invoke("hi")
    assert_no_secret(secret, chat, caught.value)


def test_langchain_exception_classes_catch_ours(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    from langchain_core.exceptions import ContextOverflowError, ModelAuthenticationError

    openai_fake.inject(Fault.UNAUTHORIZED)
    with pytest.raises(ModelAuthenticationError):
        model.invoke("hi")
    openai_fake.inject(Fault.CONTEXT_TOO_LONG)
    with pytest.raises(ContextOverflowError):
        model.invoke("hi")


def test_prompt_over_the_context_window(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    openai_fake.context_window = 20
    try:
        with pytest.raises(ContextTooLongError):
            model.invoke("word " * 50)
    finally:
        openai_fake.context_window = 8192


def test_timeout_is_a_timeout_error(model: ChatOpenAICompatible, openai_fake: FakeOpenAI) -> None:
    openai_fake.inject(Fault.SLOW, times=3, delay=1.0)
    quick = model.model_copy(update={"timeout": 0.2, "max_retries": 0})
    with pytest.raises(VendorTimeoutError):
        quick.invoke("hi")


def test_error_mid_stream_is_raised_not_retried(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    openai_fake.inject(Fault.MID_STREAM_ERROR)
    received: list[AIMessageChunk] = []
    with pytest.raises(UpstreamError) as caught:
        for chunk in model.stream("one two three four"):
            received.append(chunk)
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert caught.value.status_code is None  # the stream had begun with a 200
    assert "".join(str(c.content) for c in received) == "Echo:"
    assert len(openai_fake.requests) == 1


async def test_cut_stream_is_a_connection_error_not_retried(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    openai_fake.inject(Fault.CUT_STREAM)
    with pytest.raises(VendorConnectionError):
        async for _ in model.astream("one two three four"):
            pass
    assert len(openai_fake.requests) == 1


async def test_stream_is_retried_before_the_first_byte(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    openai_fake.inject(Fault.SERVER_ERROR)
    text = "".join([str(c.content) async for c in model.astream("hi")])
    assert text == "Echo: hi"
    assert len(openai_fake.requests) == 2


async def test_streams_give_their_connection_back_to_the_pool(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    for _ in range(3):
        assert "".join(str(c.content) for c in model.stream("hi")) == "Echo: hi"
    for _ in range(3):
        assert "".join([str(c.content) async for c in model.astream("hi")]) == "Echo: hi"
    peers = [r["peer"] for r in openai_fake.requests]
    assert len(set(peers[:3])) == 1, "each sync stream opened a new connection"
    assert len(set(peers[3:])) == 1, "each async stream opened a new connection"


async def test_concurrent_async_calls_share_the_pool(model: ChatOpenAICompatible) -> None:
    answers = await asyncio.gather(*(model.ainvoke(f"n{i}") for i in range(20)))
    assert [a.content for a in answers] == [f"Echo: n{i}" for i in range(20)]


def test_compatible_endpoint_is_a_catalog_entry(
    tmp_path: pytest.TempPathFactory,
    openai_server: tuple[FakeOpenAI, str],
    openai_fake: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pathlib import Path

    from fengchao_chains.catalog import load_catalog
    from fengchao_chains.settings import load_settings

    _, url = openai_server
    extra = Path(str(tmp_path)) / "extra.toml"
    extra.write_text(
        '[models."my-vllm"]\nowned_by = "me"\nvendor = "openai_compatible"\n'
        'vendor_model = "served-model"\nchannel = "本地模型"\nmax_input_token = 4096\n'
        'max_output_token = 512\nin_price = 0\nout_price = 0\nunit = "CNY"\n'
        f'base_url = "{url}/v1"\napi_key_env = "MY_VLLM_KEY"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("MY_VLLM_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-be-sent")
    settings = load_settings()
    catalog = load_catalog([*settings.catalog_files, extra])
    chat = get_chat_model("my-vllm", catalog=catalog, settings=settings)
    assert chat.invoke("hi").content == "Echo: hi"
    assert openai_fake.last_request["body"]["model"] == "served-model"
    assert openai_fake.last_request["headers"]["authorization"] == "Bearer sk-test"
