"""``coalesce_stream_text``: the text deltas of one network read leave as one chunk.

The fakes write a whole stream in one go (their response sends what its body has made each
time it runs), so every vendor's stream here arrives in one read; a paced fake shows that
nothing is held back when events arrive apart.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from fengchao_chains.llms._base import VendorChatModel
from fengchao_chains.llms._http import ResponseMeta
from fengchao_chains.llms._sse import ServerSentEvent
from fengchao_chains.llms.errors import UpstreamError
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible
from fengchao_chains.testing.fakes._common import FakeVendor, Fault
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.checks import summed
from tests.vendors.harness import HARNESSES, VendorHarness

COALESCING = [h for h in HARNESSES if h.streams and issubclass(h.chat_class, VendorChatModel)]
PROMPT = "one two three four five six seven eight"


def texts(chunks: list[AIMessageChunk]) -> list[str]:
    return [str(c.content) for c in chunks if c.content]


@pytest.mark.parametrize("harness", COALESCING, ids=str)
async def test_a_burst_is_one_chunk_and_adds_up_to_the_same_answer(
    harness: VendorHarness, fake: FakeVendor, url: str
) -> None:
    one_by_one = [c async for c in harness.model(url).astream(PROMPT)]
    merged = [c async for c in harness.model(url, coalesce_stream_text=True).astream(PROMPT)]

    assert len(texts(one_by_one)) > 1
    assert len(merged) == 1  # the whole burst: its text in the closing chunk
    whole, joined = summed(one_by_one), summed(merged)
    assert joined.content == whole.content
    assert joined.usage_metadata == whole.usage_metadata
    assert joined.response_metadata.get("finish_reason") == whole.response_metadata.get(
        "finish_reason"
    )
    assert merged[-1].usage_metadata == one_by_one[-1].usage_metadata  # the closing chunk


@pytest.mark.parametrize("harness", COALESCING, ids=str)
def test_a_sync_burst_is_one_chunk_too(harness: VendorHarness, fake: FakeVendor, url: str) -> None:
    one_by_one = list(harness.model(url).stream(PROMPT))
    merged = list(harness.model(url, coalesce_stream_text=True).stream(PROMPT))
    assert len(texts(merged)) == 1
    assert summed(merged).content == summed(one_by_one).content


@pytest.mark.parametrize("harness", COALESCING, ids=str)
async def test_text_before_an_error_in_the_same_read_is_passed_on_first(
    harness: VendorHarness, fake: FakeVendor, url: str
) -> None:
    fake.inject(Fault.MID_STREAM_ERROR)
    received: list[AIMessageChunk] = []
    with pytest.raises(UpstreamError):
        async for chunk in harness.model(url, coalesce_stream_text=True).astream(PROMPT):
            received.append(chunk)
    assert texts(received) == ["Echo:"]


INTERVAL = 0.15


@pytest.fixture(scope="module")
def paced_url() -> Iterator[str]:
    fake = FakeOpenAI(event_interval=INTERVAL)
    with serve_in_thread(fake.app) as url:
        yield url + "/v1"


async def test_events_that_arrive_apart_leave_apart_and_at_once(paced_url: str) -> None:
    model = ChatOpenAICompatible(
        model="gpt-4o-mini", api_key="sk-test", base_url=paced_url, coalesce_stream_text=True
    )
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    async for chunk in model.astream("one two three"):
        if chunk.content:
            arrivals.append((time.monotonic() - started, str(chunk.content)))

    assert [text for _, text in arrivals] == ["Echo", ":", " one", " two", " three"]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert all(gap > INTERVAL / 2 for gap in gaps), gaps


def openai_event(data: dict[str, Any] | str) -> ServerSentEvent:
    return ServerSentEvent(data=data if isinstance(data, str) else json.dumps(data))


def delta(**fields: Any) -> ServerSentEvent:
    return openai_event({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": fields}]})


def decoded(coalesce: bool, *reads: list[ServerSentEvent]) -> list[list[ChatGenerationChunk]]:
    """What the OpenAI decoder makes of each read, then its closing chunk."""
    model = ChatOpenAICompatible(model="m", api_key="k", coalesce_stream_text=coalesce)
    decoder = model._stream_decoder(ResponseMeta(200, {}, None))
    batches = []
    for events in reads:
        chunks, error = decoder.feed_read(events)
        assert error is None
        batches.append(chunks)
    return [*batches, decoder.finish()]


def test_text_is_merged_up_to_the_next_other_chunk_and_the_end_of_the_read() -> None:
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}
    first = [delta(role="assistant", content=""), delta(content="a"), delta(content="b")]
    first += [delta(tool_calls=[call]), delta(content="c"), delta(content="d")]
    second = [delta(content="e"), delta(content="f"), openai_event("[DONE]"), delta(content="g")]

    merged = decoded(True, first, second)
    one_by_one = decoded(False, first, second)

    # the read that ends the stream has its text in the closing chunk: one chunk, not two
    assert [[c.text for c in batch] for batch in merged] == [["ab", "", "cd"], [], ["ef"]]
    assert [[c.text for c in batch] for batch in one_by_one] == [
        ["a", "b", "", "c", "d"],
        ["e", "f"],
        [""],
    ]
    assert [c.message.id for batch in merged for c in batch] == ["chatcmpl-1"] * 4
    tool = merged[0][1].message
    assert isinstance(tool, AIMessageChunk) and tool.tool_call_chunks[0]["name"] == "f"
    closing = merged[-1][0]
    assert closing.message.response_metadata == one_by_one[-1][0].message.response_metadata
    assert isinstance(closing.message, AIMessageChunk)
    assert closing.message.chunk_position == "last"


def test_a_stream_in_one_read_is_one_chunk_with_its_usage() -> None:
    end = openai_event(
        {
            "id": "chatcmpl-1",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    read = [delta(role="assistant", content=""), delta(content="你"), delta(content="好"), end]
    ((), (closing,)) = decoded(True, [*read, openai_event("[DONE]")])
    assert closing.text == "你好"
    assert closing.generation_info == {"finish_reason": "stop"}
    message = closing.message
    assert isinstance(message, AIMessageChunk) and message.chunk_position == "last"
    assert message.usage_metadata is not None and message.usage_metadata["total_tokens"] == 5
    assert message.response_metadata["finish_reason"] == "stop"

    # a read that does not end the stream still passes its text at once, on its own
    (first,), (), (later,) = decoded(True, read[:3], [end, openai_event("[DONE]")])
    assert first.text == "你好" and later.text == ""
    assert isinstance(later.message, AIMessageChunk) and later.message.usage_metadata


def test_a_merged_chunk_is_a_plain_text_chunk() -> None:
    reads = [delta(content="你"), delta(content="好"), delta(content="！")]
    ((chunk,), _closing) = decoded(True, reads)
    assert chunk.text == chunk.message.content == "你好！"
    assert chunk.generation_info is None
    assert isinstance(chunk.message, AIMessageChunk)
    assert chunk.message.response_metadata == {}
    assert chunk.message.usage_metadata is None
