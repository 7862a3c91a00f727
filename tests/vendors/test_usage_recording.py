"""The usage recorder on every vendor's chat model: one record per call, in every mode, with
the vendor's own token figures when it reports them and an estimate (marked) when a stream
fails or is abandoned before its usage arrived."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import cast

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableConfig

from fengchao_chains.callbacks import MODEL_METADATA_KEY, UsageRecord, UsageRecorder
from fengchao_chains.callbacks.token_estimate import estimate_prompt_tokens, estimate_tokens
from fengchao_chains.catalog import Catalog, load_catalog
from fengchao_chains.llms.errors import UpstreamError
from fengchao_chains.testing.fakes._common import FakeVendor, Fault
from tests.vendors.checks import summed
from tests.vendors.harness import HARNESSES, VendorHarness

STREAMING = [h for h in HARNESSES if h.streams]
QUESTION = "count these words please"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def recorded(harness: VendorHarness, catalog: Catalog) -> tuple[UsageRecorder, RunnableConfig]:
    recorder = UsageRecorder("fc-test", catalog, front_door="v1", request_id="r-1")
    model_id = next(iter(harness.catalog))
    config: RunnableConfig = {
        "callbacks": [recorder],
        "metadata": {MODEL_METADATA_KEY: model_id},
    }
    return recorder, config


def price(catalog: Catalog, record: UsageRecord) -> float:
    """What the record should cost: the card's prices (nothing for a model not in the
    catalog, such as a user's bot)."""
    if record.model not in catalog:
        return 0.0
    card = catalog[record.model]
    assert record.unit == card.unit
    return card.cost(record.prompt_tokens, record.completion_tokens)


def test_invoke_and_stream_are_one_record_each_with_the_vendors_figures(
    harness: VendorHarness, url: str, catalog: Catalog
) -> None:
    recorder, config = recorded(harness, catalog)
    model = harness.model(url)
    answer = model.invoke(QUESTION, config=config)
    chunks = list(model.stream(QUESTION, config=config))
    assert len(recorder.records) == 2
    invoked, streamed = recorder.records
    for record, usage in (
        (invoked, answer.usage_metadata),
        (streamed, summed(chunks).usage_metadata),
    ):
        assert usage is not None
        assert (record.prompt_tokens, record.completion_tokens) == (
            usage["input_tokens"],
            usage["output_tokens"],
        )
        assert record.model == next(iter(harness.catalog))
        assert record.cost == pytest.approx(price(catalog, record))
        assert record.status == "ok" and record.error is None and not record.estimated
        assert record.caller == "fc-test" and record.front_door == "v1"
        assert record.request_id == "r-1" and record.latency_ms > 0
    assert not invoked.streamed and invoked.ttft_ms is None
    assert streamed.streamed and streamed.ttft_ms is not None
    assert 0 < streamed.ttft_ms <= streamed.latency_ms
    assert invoked.run_id != streamed.run_id
    assert recorder.prompt_tokens == invoked.prompt_tokens + streamed.prompt_tokens


async def test_async_modes_record_the_same(
    harness: VendorHarness, url: str, catalog: Catalog
) -> None:
    recorder, config = recorded(harness, catalog)
    model = harness.model(url)
    answer = await model.ainvoke(QUESTION, config=config)
    chunks = [chunk async for chunk in model.astream(QUESTION, config=config)]
    usage, streamed_usage = answer.usage_metadata, summed(chunks).usage_metadata
    assert usage is not None and streamed_usage == usage
    assert [(r.prompt_tokens, r.completion_tokens, r.streamed) for r in recorder.records] == [
        (usage["input_tokens"], usage["output_tokens"], False),
        (usage["input_tokens"], usage["output_tokens"], True),
    ]


def test_a_refused_call_is_an_error_record_without_tokens(
    harness: VendorHarness, fake: FakeVendor, url: str, catalog: Catalog
) -> None:
    recorder, config = recorded(harness, catalog)
    model = harness.model(url, **harness.bad_credentials)
    with pytest.raises(Exception):  # noqa: B017 (the error class is the contract test's)
        model.invoke(QUESTION, config=config)
    (record,) = recorder.records
    assert record.status == "error" and record.error
    assert (record.prompt_tokens, record.completion_tokens, record.cost) == (0, 0, 0.0)
    assert not record.estimated


@pytest.mark.parametrize("harness", STREAMING, ids=str)
def test_a_stream_failing_midway_is_recorded_with_estimated_tokens(
    harness: VendorHarness, fake: FakeVendor, url: str, catalog: Catalog
) -> None:
    fake.inject(Fault.MID_STREAM_ERROR)
    recorder, config = recorded(harness, catalog)
    received = []
    with pytest.raises(UpstreamError):
        for chunk in harness.model(url).stream("one two three four", config=config):
            received.append(chunk)
    (record,) = recorder.records
    assert record.status == "error" and record.error and record.estimated and record.streamed
    delivered = "".join(str(chunk.content) for chunk in received)
    assert delivered == "Echo:"
    assert record.completion_tokens == estimate_tokens(delivered)
    assert record.prompt_tokens == estimate_prompt_tokens([HumanMessage("one two three four")])
    assert record.cost == pytest.approx(price(catalog, record))


@pytest.mark.parametrize("harness", STREAMING, ids=str)
async def test_an_abandoned_stream_is_an_aborted_record(
    harness: VendorHarness, url: str, catalog: Catalog
) -> None:
    recorder, config = recorded(harness, catalog)
    stream = cast(
        AsyncGenerator[AIMessageChunk, None],
        harness.model(url).astream("one two three four five six", config=config),
    )
    first = await anext(stream)
    await stream.aclose()  # what a client going away does to the generator
    (record,) = recorder.records
    assert record.status == "aborted" and record.error == "GeneratorExit"
    assert record.estimated and record.streamed
    assert record.completion_tokens == estimate_tokens(str(first.content))
    assert record.prompt_tokens == estimate_prompt_tokens(
        [HumanMessage("one two three four five six")]
    )
