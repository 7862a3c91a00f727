"""The request first, LangChain's start of the run after (``fengchao_chains.llms.
request_first``): a front door's call to a vendor model is on its way to the vendor before
LangChain starts the run, the run takes up that request's answer, and every call is still
made once and recorded once; where LangChain could take another path, nothing is sent ahead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.rate_limiters import InMemoryRateLimiter
from langchain_core.runnables import RunnableConfig
from langchain_core.tracers.log_stream import LogStreamCallbackHandler

from fengchao_chains.callbacks import MODEL_METADATA_KEY, UsageRecorder
from fengchao_chains.catalog import Catalog, load_catalog
from fengchao_chains.llms import answer_first
from fengchao_chains.llms.answer_first import RunTail
from fengchao_chains.llms.request_first import can_send_ahead
from fengchao_chains.testing.fakes._common import FakeVendor, Fault
from tests.vendors.checks import summed
from tests.vendors.harness import HARNESSES, OPENAI, VendorHarness

MESSAGES: list[BaseMessage] = [HumanMessage("count these words please")]
VENDOR_MODELS = [h for h in HARNESSES if h.name != "tgi"]  # TGI's model is not over _http
STREAMING = [h for h in VENDOR_MODELS if h.streams]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


class SeesTheVendor(BaseCallbackHandler):
    """At the run's start, waits (blocking the loop, as slow start-up work would) until the
    vendor has seen a request, up to a limit, and notes whether it had."""

    run_inline = True
    raise_error = True

    def __init__(self, harness: VendorHarness, fake: FakeVendor) -> None:
        self.seen_at_start: list[bool] = []
        self._harness, self._fake = harness, fake
        self._before = self._count()

    def _count(self) -> int:
        return self._harness.count_requests(self._fake)

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        deadline = time.monotonic() + 0.5
        while self._count() == self._before and time.monotonic() < deadline:
            time.sleep(0.01)
        self.seen_at_start.append(self._count() > self._before)


def config_with(catalog: Catalog, harness: VendorHarness, *handlers: Any) -> RunnableConfig:
    recorder = UsageRecorder("fc-test", catalog, front_door="v1")
    return {
        "callbacks": [recorder, *handlers],
        "metadata": {MODEL_METADATA_KEY: next(iter(harness.catalog))},
    }


def recorder_of(config: RunnableConfig) -> UsageRecorder:
    callbacks = config["callbacks"]
    assert isinstance(callbacks, list) and isinstance(callbacks[0], UsageRecorder)
    return callbacks[0]


async def warmed_up(harness: VendorHarness, url: str, **fields: Any) -> BaseChatModel:
    """The model with its connection open and any access token fetched, so its request is
    written in the turns it is given before the run starts."""
    model = harness.model(url, **fields)
    await model.ainvoke(MESSAGES)
    return model


@pytest.mark.parametrize("harness", VENDOR_MODELS, ids=str)
async def test_an_answers_request_reaches_the_vendor_before_the_run_starts(
    harness: VendorHarness, fake: FakeVendor, url: str, catalog: Catalog
) -> None:
    model = await warmed_up(harness, url)
    sees = SeesTheVendor(harness, fake)
    config = config_with(catalog, harness, sees)
    before = harness.count_requests(fake)
    tail = RunTail()

    answer = await tail.ainvoke(model, MESSAGES, config)
    await tail.finish()

    assert sees.seen_at_start == [True]
    assert harness.count_requests(fake) == before + 1  # the run sent none of its own
    assert answer.text == (await model.ainvoke(MESSAGES)).text
    [record] = recorder_of(config).records
    assert (record.status, record.run_id) == ("ok", tail.run_id)
    assert answer.usage_metadata is not None
    assert record.prompt_tokens == answer.usage_metadata["input_tokens"]
    assert record.completion_tokens == answer.usage_metadata["output_tokens"]


@pytest.mark.parametrize("opened", [False, True], ids=["astream", "aopen_stream"])
@pytest.mark.parametrize("harness", STREAMING, ids=str)
async def test_a_streams_request_reaches_the_vendor_before_the_run_starts(
    harness: VendorHarness, fake: FakeVendor, url: str, catalog: Catalog, opened: bool
) -> None:
    model = await warmed_up(harness, url)
    sees = SeesTheVendor(harness, fake)
    config = config_with(catalog, harness, sees)
    before = harness.count_requests(fake)
    tail = RunTail()

    if opened:  # the request is written by the time the opening returns
        stream = await tail.aopen_stream(model, MESSAGES, config)
        deadline = time.monotonic() + 0.5  # the loop blocked: only what was written arrives
        while harness.count_requests(fake) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert harness.count_requests(fake) == before + 1
    else:
        stream = tail.astream(model, MESSAGES, config)
    chunks = [chunk async for chunk in stream]
    await tail.finish()

    assert sees.seen_at_start == [True]
    assert harness.count_requests(fake) == before + 1
    whole = summed(chunks)
    assert whole.text == "".join([c.text async for c in model.astream(MESSAGES)])
    [record] = recorder_of(config).records
    assert record.status == "ok"
    assert whole.usage_metadata is not None
    assert record.completion_tokens == whole.usage_metadata["output_tokens"]


async def test_an_opened_stream_never_read_is_withdrawn_by_the_tail(
    openai_fake: FakeVendor,
    openai_root: str,
    catalog: Catalog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = await warmed_up(OPENAI, openai_root)
    openai_fake.inject(Fault.SLOW, delay=0.5)
    config = config_with(catalog, OPENAI)
    tail = RunTail()
    await tail.aopen_stream(model, MESSAGES, config)
    assert answer_first._Load.calls == 1

    with caplog.at_level(logging.WARNING):
        await tail.finish()
        await tail.finish()
    await asyncio.sleep(0.05)

    assert answer_first._Load.calls == 0
    pending = [t for t in asyncio.all_tasks() if "_astart_call" in repr(t.get_coro())]
    assert pending == []
    assert recorder_of(config).records == []  # no run was started
    assert "not taken up" not in caplog.text  # a withdrawal, not a surprise


openai_fake, openai_url, openai_model = OPENAI.fixtures(
    fake="openai_fake", url="openai_url", model="openai_model"
)


@pytest.fixture
def openai_root(openai_fake: FakeVendor, openai_server: tuple[FakeVendor, str]) -> str:
    """The fresh fake's root URL, for models of the test's own making."""
    return openai_server[1]


async def calls_made(fake: FakeVendor, call: Any) -> int:
    before = len(fake.requests)
    await call
    await asyncio.sleep(0.1)  # the fake has seen all it was sent
    return len(fake.requests) - before


async def answer(model: BaseChatModel, config: RunnableConfig | None = None) -> str:
    tail = RunTail()
    message = await tail.ainvoke(model, MESSAGES, config)
    await tail.finish()
    return message.text


async def stream(model: BaseChatModel, config: RunnableConfig | None = None) -> str:
    tail = RunTail()
    text = "".join([chunk.text async for chunk in tail.astream(model, MESSAGES, config)])
    await tail.finish()
    return text


async def test_a_cached_answer_costs_no_request(openai_fake: FakeVendor, openai_root: str) -> None:
    """LangChain looks in the model's cache before it calls the model: nothing is sent ahead
    of a call that the cache may answer."""
    model = OPENAI.model(openai_root, cache=InMemoryCache())
    assert await calls_made(openai_fake, answer(model)) == 1
    assert await calls_made(openai_fake, answer(model)) == 0


@pytest.mark.parametrize("mode", [answer, stream], ids=["answer", "stream"])
async def test_a_rate_limited_model_sends_its_request_when_the_limiter_lets_it(
    openai_fake: FakeVendor, openai_root: str, catalog: Catalog, mode: Any
) -> None:
    limiter = InMemoryRateLimiter(requests_per_second=4, check_every_n_seconds=0.01)
    model = await warmed_up(OPENAI, openai_root, rate_limiter=limiter)
    sees = SeesTheVendor(OPENAI, openai_fake)
    assert await calls_made(openai_fake, mode(model, config_with(catalog, OPENAI, sees))) == 1
    assert sees.seen_at_start == [False]


@pytest.mark.parametrize(
    ("fields", "mode"),
    [
        ({"disable_streaming": True}, stream),  # LangChain answers a stream with ainvoke
        ({"streaming": True}, answer),  # LangChain answers ainvoke with a stream
    ],
    ids=["stream-of-a-model-that-does-not-stream", "answer-of-a-streaming-model"],
)
async def test_where_langchain_takes_the_other_mode_one_request_is_made(
    openai_fake: FakeVendor, openai_root: str, fields: dict[str, Any], mode: Any
) -> None:
    model = OPENAI.model(openai_root, **fields)
    assert await calls_made(openai_fake, mode(model)) == 1
    assert (await mode(model)).strip()


def test_handlers_that_make_langchain_stream_keep_the_request_in_the_run(
    openai_model: BaseChatModel, catalog: Catalog
) -> None:
    plain = config_with(catalog, OPENAI)
    streaming = config_with(catalog, OPENAI, LogStreamCallbackHandler())
    assert can_send_ahead(openai_model, MESSAGES, plain, {}, stream=False)
    assert not can_send_ahead(openai_model, MESSAGES, streaming, {}, stream=False)
    assert not can_send_ahead(openai_model, "a string LangChain converts", plain, {}, stream=False)
    blocks: list[BaseMessage] = [HumanMessage([{"type": "text", "text": "blocks"}])]
    assert not can_send_ahead(openai_model, blocks, plain, {}, stream=False)


class FailsToStart(BaseCallbackHandler):
    raise_error = True

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("this handler will not have the run start")


@pytest.mark.parametrize("mode", [answer, stream], ids=["answer", "stream"])
async def test_a_run_that_fails_before_the_vendor_leaves_nothing_behind(
    openai_model: BaseChatModel,
    catalog: Catalog,
    mode: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that raises at the run's start stops the call in LangChain before it gets
    to the model; the request sent ahead is let go of, and that is logged."""
    config = config_with(catalog, OPENAI, FailsToStart())
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="will not"):
        await mode(openai_model, config)
    assert "sent ahead of its LangChain run was not taken up" in caplog.text
    assert answer_first._Load.calls == 0
    await asyncio.sleep(0.05)
    pending = [t for t in asyncio.all_tasks() if "_astart_call" in repr(t.get_coro())]
    assert pending == []


@pytest.mark.parametrize("mode", ["answer", "stream"])
async def test_a_caller_that_leaves_cancels_the_request_sent_ahead(
    openai_fake: FakeVendor, openai_model: BaseChatModel, catalog: Catalog, mode: str
) -> None:
    openai_fake.inject(Fault.SLOW, delay=0.5)
    config = config_with(catalog, OPENAI)
    tail = RunTail()
    call = (
        tail.ainvoke(openai_model, MESSAGES, config)
        if mode == "answer"
        else anext(tail.astream(openai_model, MESSAGES, config))
    )
    waiting = asyncio.ensure_future(call)
    await asyncio.sleep(0.2)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.05)

    pending = [t for t in asyncio.all_tasks() if "_astart_call" in repr(t.get_coro())]
    assert pending == []
    assert answer_first._Load.calls == 0
    assert not tail.pending


@pytest.mark.parametrize("mode", [answer, stream], ids=["answer", "stream"])
async def test_a_busy_process_sends_the_request_from_the_run(
    openai_fake: FakeVendor,
    openai_root: str,
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    mode: Any,
) -> None:
    model = await warmed_up(OPENAI, openai_root)
    monkeypatch.setattr(answer_first, "ANSWER_FIRST_UP_TO", 0)
    sees = SeesTheVendor(OPENAI, openai_fake)
    assert await calls_made(openai_fake, mode(model, config_with(catalog, OPENAI, sees))) == 1
    assert sees.seen_at_start == [False]
