"""The chat chain's stream guard stage: what it does to the model's chunk objects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from langchain_core.messages import AIMessageChunk, BaseMessage

from fengchao_chains.chains.chat import aguard_chunks
from fengchao_chains.gateway.sensitive import SensitiveWords

WORDS = SensitiveWords(["online casino", "冰毒"])


async def _source(chunks: list[AIMessageChunk]) -> AsyncIterator[BaseMessage]:
    for chunk in chunks:
        yield chunk


def _guarded(chunks: list[AIMessageChunk]) -> list[AIMessageChunk]:
    async def collect() -> list[AIMessageChunk]:
        return [c async for c in aguard_chunks(WORDS, _source(chunks), replace=False)]

    return asyncio.run(collect())


def test_released_text_keeps_each_chunks_identity_and_leaves_the_originals_alone() -> None:
    deltas = ["Connection", " pools", " keep", " sockets", " warm", "."]
    chunks = [AIMessageChunk(content=d, id="run-1", name="bot") for d in deltas]
    chunks.append(
        AIMessageChunk(content="", id="run-1", response_metadata={"finish_reason": "stop"})
    )
    out = _guarded(chunks)
    assert "".join(c.text for c in out) == "".join(deltas)
    assert [c.content for c in chunks[:-1]] == deltas  # nothing was changed in place
    held = [c for c in out if all(c is not original for original in chunks)]
    assert held  # "Connection" ends in "on", which "online casino" starts: some text was held
    for chunk in held:  # copies of the model's chunk carrying the released text
        assert (chunk.id, chunk.name) == ("run-1", "bot")
    unchanged = [c for c in out if any(c is original for original in chunks)]
    assert unchanged  # text released as it came passes as the same object
    assert out[-1].response_metadata["finish_reason"] == "stop"


def test_a_chunk_with_tool_calls_comes_out_as_a_plain_text_chunk() -> None:
    call = {"name": "lookup", "args": "{}", "id": "call-1", "index": 0, "type": "tool_call_chunk"}
    chunk = AIMessageChunk(content="on", id="run-1", tool_call_chunks=[call])
    out = _guarded([chunk, AIMessageChunk(content="ly", id="run-1")])
    assert "".join(c.text for c in out) == "only"
    assert all(not c.tool_call_chunks for c in out)
