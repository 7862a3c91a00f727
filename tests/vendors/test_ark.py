"""Volcengine Ark (v3 chat and bots) against the fake Ark server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from pydantic import SecretStr

from fengchao_chains import get_chat_model
from fengchao_chains.catalog import Catalog, load_catalog
from fengchao_chains.llms.ark import ChatArk, ChatArkBot
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    RateLimitError,
    UpstreamError,
    VendorConnectionError,
    VendorError,
    VendorTimeoutError,
)
from fengchao_chains.settings import Settings, load_settings
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.ark import FakeArk
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.checks import assert_four_modes, assert_no_secret, summed

ENDPOINT = "ep-20240601123456-abcde"
BOT = "bot-20240601123456-xyz12"

CATALOG = f"""
[models."Skylark2-pro-4k"]
owned_by = "Volcengine"
vendor = "ark"
vendor_model = "{ENDPOINT}"
channel = "在线模型"
max_input_token = 4096
max_output_token = 1024
in_price = 0.008
out_price = 0.008
unit = "CNY"

[models."doubao-pro-32k"]
owned_by = "Volcengine"
vendor = "ark"
vendor_model = "doubao-pro-32k-240515"
channel = "在线模型"
max_input_token = 32768
max_output_token = 4096
in_price = 0.0008
out_price = 0.002
unit = "CNY"

[models."ark-search-bot"]
owned_by = "Volcengine"
vendor = "ark_bot"
vendor_model = "{BOT}"
channel = "在线模型"
max_input_token = 32768
max_output_token = 4096
in_price = 0.0008
out_price = 0.002
unit = "CNY"
"""


@pytest.fixture(scope="module")
def ark_server() -> Iterator[tuple[FakeArk, str]]:
    fake = FakeArk(api_keys={"ark-test-key"})
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(ark_server: tuple[FakeArk, str]) -> Iterator[FakeArk]:
    server, _ = ark_server
    server.clear_faults()
    server.requests.clear()
    yield server
    server.clear_faults()
    server.context_window = 8192
    server.mid_stream_code = "InternalServiceError"


@pytest.fixture
def base(ark_server: tuple[FakeArk, str]) -> str:
    return f"{ark_server[1]}/api/v3"


@pytest.fixture
def chat(base: str, fake: FakeArk) -> ChatArk:
    return ChatArk(model=ENDPOINT, api_key="ark-test-key", base_url=base)


@pytest.fixture(params=["v3", "v2"])
def bot(request: pytest.FixtureRequest, base: str, fake: FakeArk) -> ChatArkBot:
    return ChatArkBot(model=BOT, api_key="ark-test-key", base_url=base, bot_api=request.param)


@pytest.fixture(params=["chat", "bot-v3", "bot-v2"])
def any_model(request: pytest.FixtureRequest, base: str, fake: FakeArk) -> ChatArk:
    """Every route, for the behaviour they share (errors, retries, streams)."""
    if request.param == "chat":
        return ChatArk(model=ENDPOINT, api_key="ark-test-key", base_url=base)
    api = request.param.removeprefix("bot-")
    return ChatArkBot(model=BOT, api_key="ark-test-key", base_url=base, bot_api=api)


@pytest.fixture
def catalog(tmp_path: Path, base: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Catalog, Settings]:
    extra = tmp_path / "ark.toml"
    extra.write_text(CATALOG, encoding="utf-8")
    monkeypatch.setenv("ARK_API_KEY", "ark-test-key")
    monkeypatch.setenv("ARK_BASE_URL", base)
    settings = load_settings()
    return load_catalog([*settings.catalog_files, extra]), settings


# ---------------------------------------------------------------------------- catalog


@pytest.mark.parametrize(
    ("model_id", "overrides", "vendor_model", "path"),
    [
        ("Skylark2-pro-4k", {}, ENDPOINT, "/api/v3/chat/completions"),
        ("doubao-pro-32k", {}, "doubao-pro-32k-240515", "/api/v3/chat/completions"),
        ("ark-search-bot", {}, BOT, "/api/v3/bots/chat/completions"),
        ("ark-search-bot", {"bot_api": "v2"}, BOT, f"/api/v2/bots/{BOT}/chat"),
    ],
)
async def test_catalog_entries_in_all_four_modes(
    model_id: str,
    overrides: dict[str, Any],
    *,
    vendor_model: str,
    path: str,
    catalog: tuple[Catalog, Settings],
    fake: FakeArk,
) -> None:
    cards, settings = catalog
    model = get_chat_model(model_id, catalog=cards, settings=settings, **overrides)
    assert isinstance(model, ChatArkBot if model_id == "ark-search-bot" else ChatArk)
    await assert_four_modes(model, expected_model=vendor_model)
    request = fake.last_request
    assert request["path"] == path
    assert request["headers"]["authorization"] == "Bearer ark-test-key"
    if "v2" not in path:
        assert request["body"]["model"] == vendor_model


def test_catalog_overrides_win(catalog: tuple[Catalog, Settings], fake: FakeArk) -> None:
    cards, settings = catalog
    model = get_chat_model("Skylark2-pro-4k", catalog=cards, settings=settings, temperature=0.2)
    model.invoke("hi")
    assert fake.last_request["body"]["temperature"] == 0.2
    with pytest.raises(AuthenticationError):
        get_chat_model("Skylark2-pro-4k", catalog=cards, settings=settings, api_key="nope").invoke(
            "hi"
        )


def test_env_vars_configure_the_classes(
    base: str, fake: FakeArk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARK_API_KEY", "ark-test-key")
    monkeypatch.setenv("ARK_BASE_URL", base)
    assert ChatArk(model=ENDPOINT).invoke("hi").content == "Echo: hi"
    assert ChatArkBot(model=BOT).invoke("hi").content == "Echo: hi"
    assert ChatArk(model=ENDPOINT).default_base_url == "https://ark.cn-beijing.volces.com/api/v3"


def test_missing_key_fails_before_calling(base: str, fake: FakeArk) -> None:
    with pytest.raises(AuthenticationError, match="ARK_API_KEY"):
        ChatArk(model=ENDPOINT, base_url=base).invoke("hi")
    assert fake.requests == []


# ---------------------------------------------------------------------------- the wire


def test_chat_payload_maps_standard_parameters(chat: ChatArk, fake: FakeArk) -> None:
    tuned = chat.model_copy(
        update={
            "temperature": 0.3,
            "top_p": 0.9,
            "max_tokens": 50,
            "model_kwargs": {"repetition_penalty": 1.05},
        }
    )
    tuned.invoke([SystemMessage("be brief"), HumanMessage("hi")], stop=["\n\n"], user="u1")
    body = fake.last_request["body"]
    assert body == {
        "model": ENDPOINT,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["\n\n"],
        "repetition_penalty": 1.05,
        "user": "u1",
        "stream": False,
    }
    list(tuned.stream("hi"))
    assert fake.last_request["body"]["stream_options"] == {"include_usage": True}


def test_bot_v2_nests_parameters_and_names_the_bot_in_the_path(base: str, fake: FakeArk) -> None:
    bot = ChatArkBot(
        model=BOT,
        api_key="ark-test-key",
        base_url=base,
        bot_api="v2",
        temperature=0.5,
        model_kwargs={"top_k": 5},
    )
    bot.invoke("hi", max_tokens=20)
    request = fake.last_request
    assert request["path"] == f"/api/v2/bots/{BOT}/chat"
    assert request["body"] == {
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "parameters": {"temperature": 0.5, "max_tokens": 20, "top_k": 5},
    }
    bot.invoke("hi", model="bot-other")
    assert fake.last_request["path"] == "/api/v2/bots/bot-other/chat"


def test_per_call_model_overrides(chat: ChatArk, base: str, fake: FakeArk) -> None:
    answer = chat.invoke("hi", model="ep-20240601123456-other")
    assert fake.last_request["body"]["model"] == "ep-20240601123456-other"
    assert answer.response_metadata["model_name"] == "ep-20240601123456-other"
    bot = ChatArkBot(model=BOT, api_key="ark-test-key", base_url=base)
    bot.invoke("hi", model="bot-other")
    assert fake.last_request["body"]["model"] == "bot-other"
    assert fake.last_request["path"] == "/api/v3/bots/chat/completions"


def test_max_tokens_and_stop_reach_the_vendor(any_model: ChatArk) -> None:
    cut = any_model.invoke("one two three four five six", max_tokens=3)
    assert cut.response_metadata["finish_reason"] == "length"
    assert cut.content == "Echo: one"
    stopped = any_model.invoke("alpha beta gamma", stop=["beta"])
    assert stopped.content == "Echo: alpha"


def test_chat_metadata_and_stream_usage_once(chat: ChatArk) -> None:
    answer = chat.invoke("count these words")
    assert answer.response_metadata["request_id"]
    assert answer.usage_metadata == {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    chunks = list(chat.stream("count these words"))
    assert len([c for c in chunks if c.usage_metadata]) == 1
    assert summed(chunks).usage_metadata == answer.usage_metadata


# ---------------------------------------------------------------------------- bots


def test_bot_answer_carries_references_and_usage(bot: ChatArkBot, fake: FakeArk) -> None:
    answer = bot.invoke("北京天气")
    metadata = answer.response_metadata
    assert metadata["references"] == fake.bot_references("北京天气")
    assert metadata["references"][0]["url"].startswith("https://search.example.com/")
    assert [m["name"] for m in metadata["model_usage"]] == [f"ep-{BOT}-answer", f"ep-{BOT}-planner"]
    assert metadata["action_usage"] == [{"name": "web_search", "search_count": 1}]
    assert metadata["request_id"].startswith("0217")
    # usage is the sum over the bot's model calls: the answer and the planner
    answer_call, planner = metadata["model_usage"]
    assert answer_call["completion_tokens"] == 6  # Echo, :, 北, 京, 天, 气
    assert answer.usage_metadata == {
        "input_tokens": answer_call["prompt_tokens"] + planner["prompt_tokens"],
        "output_tokens": 6 + planner["completion_tokens"],
        "total_tokens": answer_call["total_tokens"] + planner["total_tokens"],
    }


async def test_bot_stream_puts_references_and_usage_on_the_last_chunk(
    bot: ChatArkBot,
) -> None:
    chunks = [c async for c in bot.astream("北京天气")]
    assert all("references" not in c.response_metadata for c in chunks[:-1])
    assert [bool(c.usage_metadata) for c in chunks].count(True) == 1
    last = chunks[-1]
    assert last.usage_metadata is not None
    assert last.response_metadata["references"][0]["title"] == "About 北京天气"
    assert len(last.response_metadata["model_usage"]) == 2
    assert last.response_metadata["action_usage"][0]["search_count"] == 1
    whole = await bot.ainvoke("北京天气")
    total = summed(chunks)
    assert total.content == whole.content
    assert total.usage_metadata == whole.usage_metadata
    assert total.response_metadata["references"] == whole.response_metadata["references"]


def test_bot_without_references_reports_an_empty_list(
    bot: ChatArkBot, fake: FakeArk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake, "bot_references", lambda query: [])
    assert bot.invoke("hi").response_metadata["references"] == []
    assert summed(list(bot.stream("hi"))).response_metadata["references"] == []


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fault", "error", "status", "code"),
    [
        (Fault.UNAUTHORIZED, AuthenticationError, 401, "AuthenticationError"),
        (Fault.CONTEXT_TOO_LONG, ContextTooLongError, 400, "InvalidParameter"),
        (Fault.CONTENT_FILTERED, ContentFilteredError, 400, "SensitiveContentDetected"),
    ],
)
def test_errors_map_to_the_tree_without_retry(
    any_model: ChatArk,
    fake: FakeArk,
    *,
    fault: Fault,
    error: type[VendorError],
    status: int,
    code: str,
) -> None:
    fake.inject(fault)
    with pytest.raises(error) as caught:
        any_model.invoke("hi")
    assert caught.value.status_code == status
    assert caught.value.code == code
    assert caught.value.request_id and caught.value.request_id.startswith("0217")
    assert len(fake.requests) == 1


def test_prompt_over_the_context_window(any_model: ChatArk, fake: FakeArk) -> None:
    fake.context_window = 20
    with pytest.raises(ContextTooLongError, match="exceeds the maximum length 20"):
        any_model.invoke("word " * 50)


def test_rate_limit_is_retried_honouring_retry_after(any_model: ChatArk, fake: FakeArk) -> None:
    fake.inject(Fault.RATE_LIMITED, times=2, retry_after=0.3)
    started = time.monotonic()
    assert any_model.invoke("hi").content == "Echo: hi"
    assert time.monotonic() - started >= 0.6
    assert len(fake.requests) == 3


def test_rate_limit_gives_up_after_max_retries(any_model: ChatArk, fake: FakeArk) -> None:
    fake.inject(Fault.RATE_LIMITED, times=5, retry_after=0)
    with pytest.raises(RateLimitError) as caught:
        any_model.model_copy(update={"max_retries": 1}).invoke("hi")
    assert caught.value.status_code == 429
    assert caught.value.code == "RateLimitExceeded.EndpointRPMExceeded"
    assert caught.value.retry_after == 0
    assert len(fake.requests) == 2


async def test_server_errors_are_retried_async(any_model: ChatArk, fake: FakeArk) -> None:
    fake.inject(Fault.SERVER_ERROR, times=1)
    assert (await any_model.ainvoke("hi")).content == "Echo: hi"
    fake.inject(Fault.SERVER_ERROR, times=3)
    with pytest.raises(UpstreamError) as caught:
        await any_model.ainvoke("hi")
    assert caught.value.status_code == 500
    assert caught.value.code == "InternalServiceError"
    assert len(fake.requests) == 5


def test_bad_key_never_appears_in_errors_or_repr(any_model: ChatArk, fake: FakeArk) -> None:
    secret = "ark-this-is-very-secret-123"
    model = any_model.model_copy(update={"api_key": SecretStr(secret)})
    with pytest.raises(AuthenticationError) as caught:
        model.invoke("hi")
    assert fake.last_request["headers"]["authorization"] == f"Bearer {secret}"
    assert_no_secret(secret, model, caught.value)
    with pytest.raises(AuthenticationError) as streamed:
        list(model.stream("hi"))
    assert_no_secret(secret, streamed.value)


def test_timeout_is_a_timeout_error(any_model: ChatArk, fake: FakeArk) -> None:
    fake.inject(Fault.SLOW, times=3, delay=1.0)
    quick = any_model.model_copy(update={"timeout": 0.2, "max_retries": 0})
    with pytest.raises(VendorTimeoutError):
        quick.invoke("hi")


# ---------------------------------------------------------------------------- streams


def test_error_chunk_mid_stream_is_raised_not_retried(any_model: ChatArk, fake: FakeArk) -> None:
    fake.inject(Fault.MID_STREAM_ERROR)
    received: list[AIMessageChunk] = []
    with pytest.raises(UpstreamError) as caught:
        for chunk in any_model.stream("one two three four"):
            received.append(chunk)
    assert "".join(str(c.content) for c in received) == "Echo:"
    assert not isinstance(caught.value, VendorConnectionError)
    assert caught.value.code == "InternalServiceError"
    assert caught.value.request_id
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("OutputTextSensitiveContentDetected", ContentFilteredError),
        ("RateLimitExceeded.EndpointTPMExceeded", RateLimitError),
    ],
)
async def test_error_chunk_is_mapped_by_its_code(
    any_model: ChatArk, fake: FakeArk, code: str, error: type[VendorError]
) -> None:
    fake.mid_stream_code = code
    fake.inject(Fault.MID_STREAM_ERROR)
    with pytest.raises(error) as caught:
        async for _ in any_model.astream("one two three four"):
            pass
    assert caught.value.code == code
    assert len(fake.requests) == 1  # a stream that has begun is never replayed


async def test_cut_stream_is_a_connection_error_not_retried(
    any_model: ChatArk, fake: FakeArk
) -> None:
    fake.inject(Fault.CUT_STREAM)
    with pytest.raises(VendorConnectionError):
        async for _ in any_model.astream("one two three four"):
            pass
    assert len(fake.requests) == 1


async def test_stream_is_retried_before_the_first_byte(any_model: ChatArk, fake: FakeArk) -> None:
    fake.inject(Fault.SERVER_ERROR)
    text = "".join([str(c.content) async for c in any_model.astream("hi")])
    assert text == "Echo: hi"
    assert len(fake.requests) == 2


async def test_concurrent_async_calls(any_model: BaseChatModel) -> None:
    answers = await asyncio.gather(*(any_model.ainvoke(f"n{i}") for i in range(10)))
    assert [a.content for a in answers] == [f"Echo: n{i}" for i in range(10)]
