"""Answer first, end the run after (``fengchao_chains.llms.answer_first``): every vendor's
answer reaches the caller before LangChain's run has ended, and the run still ends, and is
recorded, exactly once, when the caller finishes the tail."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig

from fengchao_chains.callbacks import MODEL_METADATA_KEY, UsageRecorder
from fengchao_chains.catalog import Catalog, load_catalog
from fengchao_chains.llms import answer_first
from fengchao_chains.llms._base import VendorChatModel
from fengchao_chains.llms.answer_first import RunTail
from fengchao_chains.llms.errors import VendorError
from fengchao_chains.testing.fakes._common import FakeVendor, Fault
from tests.vendors.checks import summed
from tests.vendors.harness import HARNESSES, OPENAI, VendorHarness

QUESTION = "count these words please"
STREAMING = [h for h in HARNESSES if h.streams]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def recorded(catalog: Catalog, model_id: str) -> tuple[UsageRecorder, RunnableConfig]:
    recorder = UsageRecorder("fc-test", catalog, front_door="v1")
    return recorder, {"callbacks": [recorder], "metadata": {MODEL_METADATA_KEY: model_id}}


def tokens(usage: Any) -> tuple[int, int]:
    return usage["input_tokens"], usage["output_tokens"]


async def test_the_answer_comes_before_the_run_ends_and_is_recorded_once_after(
    harness: VendorHarness, url: str, catalog: Catalog
) -> None:
    recorder, config = recorded(catalog, next(iter(harness.catalog)))
    model = harness.model(url)
    tail = RunTail()

    answer = await tail.ainvoke(model, QUESTION, config)

    hands_over = isinstance(model, VendorChatModel)  # any other model: when its run ends
    assert tail.pending is hands_over
    assert len(recorder.records) == (0 if hands_over else 1)
    assert answer.text == (await model.ainvoke(QUESTION)).text
    assert tail.usage == answer.usage_metadata
    await tail.finish()
    await tail.finish()  # once only
    assert not tail.pending
    [record] = recorder.records
    assert record.status == "ok"
    assert answer.usage_metadata is not None
    assert (record.prompt_tokens, record.completion_tokens) == tokens(answer.usage_metadata)


@pytest.mark.parametrize("harness", STREAMING, ids=str)
async def test_a_stream_ends_with_its_last_chunk_and_its_run_after(
    harness: VendorHarness, url: str, catalog: Catalog
) -> None:
    recorder, config = recorded(catalog, next(iter(harness.catalog)))
    tail = RunTail()

    chunks = [c async for c in tail.astream(harness.model(url), QUESTION, config)]

    assert chunks[-1].chunk_position == "last"
    assert tail.pending
    assert recorder.records == []
    whole = summed(chunks)
    assert tail.usage == whole.usage_metadata
    await tail.finish()
    [record] = recorder.records
    assert record.status == "ok"
    assert whole.usage_metadata is not None
    assert (record.prompt_tokens, record.completion_tokens) == tokens(whole.usage_metadata)


openai_fake, openai_url, openai_model = OPENAI.fixtures(
    fake="openai_fake", url="openai_url", model="openai_model"
)
OPENAI_ID = next(iter(OPENAI.catalog))


async def test_a_stream_closed_before_its_last_chunk_ends_as_aborted_at_once(
    openai_model: BaseChatModel, catalog: Catalog
) -> None:
    recorder, config = recorded(catalog, OPENAI_ID)
    tail = RunTail()
    chunks = tail.astream(openai_model, QUESTION, config)
    first = await anext(chunks)
    assert first.chunk_position != "last"

    await chunks.aclose()

    assert not tail.pending
    [record] = recorder.records
    assert record.status == "aborted"


async def test_a_failed_call_raises_as_ainvoke_does_and_leaves_no_tail(
    openai_fake: FakeVendor, openai_model: BaseChatModel, catalog: Catalog
) -> None:
    openai_fake.inject(Fault.SERVER_ERROR, times=3)  # the first try and both retries
    recorder, config = recorded(catalog, OPENAI_ID)
    tail = RunTail()
    with pytest.raises(VendorError):
        await tail.ainvoke(openai_model, QUESTION, config)
    assert not tail.pending
    [record] = recorder.records
    assert record.status == "error"


async def test_a_caller_cancelled_while_waiting_cancels_the_call(
    openai_fake: FakeVendor, openai_model: BaseChatModel, catalog: Catalog
) -> None:
    openai_fake.inject(Fault.SLOW, delay=0.5)
    recorder, config = recorded(catalog, OPENAI_ID)
    waiting = asyncio.ensure_future(RunTail().ainvoke(openai_model, QUESTION, config))
    await asyncio.sleep(0.2)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.6)  # the answer would have come by now

    assert recorder.records == []  # as for ainvoke cancelled: LangChain ends no run then


async def test_a_bill_counts_the_ending_call_once_before_and_after_its_record(
    openai_model: BaseChatModel, catalog: Catalog
) -> None:
    recorder, config = recorded(catalog, OPENAI_ID)
    unit = catalog[OPENAI_ID].unit
    tail = RunTail()
    answer = await tail.ainvoke(openai_model, QUESTION, config)
    assert tail.usage is not None
    ending = (tail.run_id, OPENAI_ID, tail.usage)

    before = recorder.bill(unit, ending=ending)
    await tail.finish()
    after = recorder.bill(unit, ending=ending)

    assert recorder.records[0].run_id == tail.run_id
    assert before == after == recorder.bill(unit)
    assert (before.prompt_tokens, before.completion_tokens) == tokens(answer.usage_metadata)
    assert before.cost == pytest.approx(recorder.records[0].cost)
    assert before.cost > 0


class AsksAnother(BaseChatModel):
    """A model whose answer needs another model's first (a router, a judge): only its own
    answer may be handed over to the caller waiting for it."""

    inner: BaseChatModel

    @property
    def _llm_type(self) -> str:
        return "asks-another"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise NotImplementedError

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        inner = await self.inner.ainvoke(messages)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(f"outer: {inner.text}"))])


async def test_only_the_awaited_models_answer_is_handed_over(openai_model: BaseChatModel) -> None:
    tail = RunTail()
    answer = await tail.ainvoke(AsksAnother(inner=openai_model), QUESTION, None)
    assert answer.text.startswith("outer: ")
    assert not tail.pending


async def test_a_model_that_does_not_hand_over_answers_when_its_run_ends() -> None:
    model = GenericFakeChatModel(messages=iter([AIMessage("plain")]))
    tail = RunTail()
    answer = await tail.ainvoke(model, "hi", None)
    assert answer.text == "plain"
    assert not tail.pending
    assert isinstance(answer, AIMessage) and not isinstance(answer, AIMessageChunk)


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
async def test_a_busy_process_ends_the_run_before_the_answer(
    openai_model: BaseChatModel,
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    busy: bool,
) -> None:
    """Above ``ANSWER_FIRST_UP_TO`` calls in flight the run ends first, as with plain
    ``ainvoke`` and ``astream`` (deferring costs a saturated server throughput)."""
    if busy:
        monkeypatch.setattr(answer_first, "ANSWER_FIRST_UP_TO", 0)
    recorder, config = recorded(catalog, OPENAI_ID)
    invoked, streamed = RunTail(), RunTail()

    answer = await invoked.ainvoke(openai_model, QUESTION, config)
    chunks = [c async for c in streamed.astream(openai_model, QUESTION, config)]

    assert invoked.pending is streamed.pending is not busy
    recorded_runs = {record.run_id for record in recorder.records}
    assert (streamed.run_id in recorded_runs) is busy  # idle: not before finish()
    assert invoked.usage == answer.usage_metadata
    assert streamed.usage == summed(chunks).usage_metadata
    await invoked.finish()
    await streamed.finish()
    assert [record.status for record in recorder.records] == ["ok", "ok"]


async def test_the_calls_in_flight_are_counted_down_however_they_end(
    openai_fake: FakeVendor, openai_model: BaseChatModel
) -> None:
    await RunTail().ainvoke(openai_model, QUESTION, None)
    openai_fake.inject(Fault.SERVER_ERROR, times=3)
    with pytest.raises(VendorError):
        await RunTail().ainvoke(openai_model, QUESTION, None)
    stream = RunTail().astream(openai_model, QUESTION, None)
    await anext(stream)
    await stream.aclose()
    assert answer_first._Load.calls == 0
