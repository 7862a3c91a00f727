"""The OpenAI-compatible chat model against the fake OpenAI server: what only it does
(the behaviour every vendor shares is in ``test_contract.py``)."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import cast

import aiohttp
import pytest
import urllib3
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from starlette.middleware.gzip import GZipMiddleware

from fengchao_chains import get_chat_model
from fengchao_chains.llms.errors import VendorTimeoutError
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.checks import tuned
from tests.vendors.harness import OPENAI

openai_fake, url, model = OPENAI.fixtures(fake="openai_fake")


def test_payload_maps_standard_parameters(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    tuned_model = tuned(model, model_kwargs={"seed": 7, "user": "u1"})
    tuned_model.invoke([SystemMessage("be brief"), HumanMessage("hi", name="ann")], stop=["\n\n"])
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


def test_streams_ask_for_usage(model: ChatOpenAICompatible, openai_fake: FakeOpenAI) -> None:
    """The usage chunk comes only when asked for (the contract suite checks it comes once)."""
    list(model.stream("count these words please"))
    assert openai_fake.last_request["body"]["stream_options"] == {"include_usage": True}


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


async def test_clients_of_your_own_are_used(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    """``http_client`` (urllib3) / ``http_async_client`` (aiohttp) replace the shared pool
    (proxies, headers)."""
    with urllib3.PoolManager(headers={"x-corporate-proxy": "sync"}) as client:
        own = model.model_copy(update={"http_client": client})
        assert own.invoke("hi").content == "Echo: hi"
        assert "".join(str(c.content) for c in own.stream("hi")) == "Echo: hi"
    assert [r["headers"].get("x-corporate-proxy") for r in openai_fake.requests] == ["sync"] * 2
    async with aiohttp.ClientSession(headers={"x-corporate-proxy": "async"}) as aclient:
        own = model.model_copy(update={"http_async_client": aclient})
        assert (await own.ainvoke("hi")).content == "Echo: hi"
        assert "".join([str(c.content) async for c in own.astream("hi")]) == "Echo: hi"
    assert [r["headers"].get("x-corporate-proxy") for r in openai_fake.requests[2:]] == [
        "async"
    ] * 2


def test_a_sync_call_past_the_connection_limit_waits_then_times_out(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    """A full pool makes a caller wait for a free connection up to the call's timeout, then
    fail as a timeout: no hang, and no connection beyond the limit."""
    with urllib3.PoolManager(maxsize=1, block=True) as client:
        own = model.model_copy(update={"http_client": client, "timeout": 0.3, "max_retries": 0})
        openai_fake.inject(Fault.STALL, after_chunks=1)
        held = cast(Generator[AIMessageChunk, None, None], own.stream("tell me a long story"))
        next(held)  # the one connection is busy with this answer
        started = time.monotonic()
        with pytest.raises(VendorTimeoutError):
            own.invoke("hi")
        assert 0.25 < time.monotonic() - started < 2.0
        held.close()
        assert own.invoke("hi").content == "Echo: hi"  # the freed connection serves again


def test_compressed_answers_are_accepted_and_decoded() -> None:
    """The shared sync pool asks for compressed answers and reads them (vendors gzip large
    JSON answers when asked)."""
    fake = FakeOpenAI()
    with serve_in_thread(GZipMiddleware(fake.app, minimum_size=0)) as url:
        chat = ChatOpenAICompatible(model="gpt-3.5-turbo", api_key="sk-test", base_url=url + "/v1")
        assert chat.invoke("hi").content == "Echo: hi"
    assert "gzip" in fake.last_request["headers"]["accept-encoding"]


def test_stream_usage_can_be_turned_off(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    """For servers that reject ``stream_options``; usage is then simply absent."""
    quiet = model.model_copy(update={"stream_usage": False})
    chunks = list(quiet.stream("hi"))
    assert "stream_options" not in openai_fake.last_request["body"]
    assert not any(c.usage_metadata for c in chunks)
    assert chunks[-1].response_metadata["finish_reason"] == "stop"
