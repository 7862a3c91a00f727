"""A consumer that stops reading a model's stream must end the vendor's answer at once: the
connection is closed, so the vendor stops generating (and billing) for nobody. LangChain's
``astream`` does not ``aclose`` the model's generator when its consumer goes, so both ways a
consumer can go are checked: closing the stream, and simply dropping it (the event loop's
async-generator finaliser then closes it). The sync side (urllib3) is held to the same."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncGenerator, Generator
from typing import cast

import pytest
from langchain_core.messages import AIMessageChunk

from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible
from fengchao_chains.testing.fakes._common import Fault, Served
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from tests.vendors.harness import OPENAI

openai_fake, url, model = OPENAI.fixtures(fake="openai_fake")


async def _read_two_chunks(model: ChatOpenAICompatible, fake: FakeOpenAI, *, close: bool) -> None:
    fake.inject(Fault.STALL, after_chunks=2)
    stream = cast(AsyncGenerator[AIMessageChunk, None], model.astream("tell me a long story"))
    received = [await anext(stream) for _ in range(2)]
    assert "".join(str(chunk.content) for chunk in received)
    if close:
        await stream.aclose()
    del stream


async def _until_ended(served: Served, seconds: float = 2.0) -> float:
    started = time.monotonic()
    while served.writing and time.monotonic() - started < seconds:
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.parametrize("close", [True, False], ids=["closed", "dropped"])
async def test_a_stream_left_early_ends_the_vendors_answer(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI, close: bool
) -> None:
    await _read_two_chunks(model, openai_fake, close=close)
    gc.collect()  # a dropped stream is closed by the loop's async-generator finaliser
    served = openai_fake.served[-1]
    waited = await _until_ended(served)
    assert not served.writing, "the vendor is still streaming to a consumer that left"
    assert not served.finished and waited < 1.0


async def test_a_connection_left_mid_answer_is_not_reused(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    """The next call after an abandoned stream gets a whole, correct answer (a half-read
    connection going back to the pool would hand it the old answer's leftovers)."""
    await _read_two_chunks(model, openai_fake, close=True)
    answer = await model.ainvoke("again")
    assert answer.content == "Echo: again"
    chunks = [str(chunk.content) async for chunk in model.astream("and again")]
    assert "".join(chunks) == "Echo: and again"


def _read_two_chunks_sync(model: ChatOpenAICompatible, fake: FakeOpenAI, *, close: bool) -> None:
    fake.inject(Fault.STALL, after_chunks=2)
    stream = cast(Generator[AIMessageChunk, None, None], model.stream("tell me a long story"))
    received = [next(stream) for _ in range(2)]
    assert "".join(str(chunk.content) for chunk in received)
    if close:
        stream.close()
    del stream


@pytest.mark.parametrize("close", [True, False], ids=["closed", "dropped"])
async def test_a_sync_stream_left_early_ends_the_vendors_answer(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI, close: bool
) -> None:
    await asyncio.to_thread(_read_two_chunks_sync, model, openai_fake, close=close)
    gc.collect()
    served = openai_fake.served[-1]
    waited = await _until_ended(served)
    assert not served.writing, "the vendor is still streaming to a sync consumer that left"
    assert not served.finished and waited < 1.0


def test_a_sync_connection_left_mid_answer_is_not_reused(
    model: ChatOpenAICompatible, openai_fake: FakeOpenAI
) -> None:
    _read_two_chunks_sync(model, openai_fake, close=True)
    assert model.invoke("again").content == "Echo: again"
    assert "".join(str(c.content) for c in model.stream("and again")) == "Echo: and again"
