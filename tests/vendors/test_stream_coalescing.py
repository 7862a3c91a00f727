"""``coalesce_stream_text``: the text deltas of one network read leave as one chunk.

The fakes write a whole stream in one go (their response sends what its body has made each
time it runs), so every vendor's stream here arrives in one read; a paced fake shows that
nothing is held back when events arrive apart.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from fengchao_chains.llms._base import VendorChatModel
from fengchao_chains.llms._coalesce import coalesced
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
    assert len(texts(merged)) == 1
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


def plain(text: str, id_: str | None = "run-1") -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=text, id=id_))


def test_only_adjacent_plain_text_of_one_message_is_merged() -> None:
    closing = ChatGenerationChunk(
        message=AIMessageChunk(
            content="",
            id="run-1",
            usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
            response_metadata={"finish_reason": "stop"},
            chunk_position="last",
        ),
        generation_info={"finish_reason": "stop"},
    )
    tool = ChatGenerationChunk(
        message=AIMessageChunk(
            content="",
            id="run-1",
            tool_call_chunks=[{"name": "f", "args": "{", "id": "c1", "index": 0}],
        )
    )
    reasoning = ChatGenerationChunk(
        message=AIMessageChunk(
            content="", id="run-1", additional_kwargs={"reasoning_content": "hm"}
        )
    )
    chunks = [
        plain("a"),
        plain("b"),
        reasoning,
        plain("c"),
        plain("d", "run-2"),
        plain("e", "run-2"),
        tool,
        plain("f"),
        closing,
    ]

    merged = coalesced(chunks)

    assert [c.text for c in merged] == ["ab", "", "c", "de", "", "f", ""]
    assert [c.message.id for c in merged][:4] == ["run-1", "run-1", "run-1", "run-2"]
    assert merged[1] is reasoning and merged[4] is tool and merged[6] is closing
    assert merged[5] is chunks[7]  # a run of one is the chunk itself


def test_a_merged_chunk_is_a_plain_text_chunk() -> None:
    (merged,) = coalesced([plain("你"), plain("好"), plain("！")])
    assert merged.text == merged.message.content == "你好！"
    assert merged.generation_info is None
    assert isinstance(merged.message, AIMessageChunk)
    assert merged.message.response_metadata == {}
    assert merged.message.usage_metadata is None
