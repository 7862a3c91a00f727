"""Text deltas that arrived together, passed on as one chunk (``coalesce_stream_text``).

A vendor streams one SSE event per token, usually spaced by its own generation time, so
each network read holds one event. When several arrive in one read (a vendor or proxy that
sends in bursts, or a backlog that built up while a busy server was working on other
streams) they are already late by the same amount: handing them on one by one gains the
reader nothing and costs the gateway per chunk (LangChain's callback dispatch, the guard,
the client's line), which is the cost that grows with load. Merged, the text, its order and
the time it leaves are the same; only the number of chunks drops.

Only plain text is merged: a chunk carrying anything else (usage, metadata, a finish
reason, tool calls, reasoning, a name) keeps its place and its identity.
"""

from __future__ import annotations

from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

__all__ = ["coalesced"]


def coalesced(chunks: list[ChatGenerationChunk]) -> list[ChatGenerationChunk]:
    """``chunks`` with each run of adjacent plain text chunks (same message id) made one."""
    if len(chunks) < 2:
        return chunks
    merged: list[ChatGenerationChunk] = []
    run: list[ChatGenerationChunk] = []
    for chunk in chunks:
        if run and not (_plain_text(chunk) and chunk.message.id == run[0].message.id):
            merged.append(_joined(run))
            run = []
        if _plain_text(chunk):
            run.append(chunk)
        else:
            merged.append(chunk)
    if run:
        merged.append(_joined(run))
    return merged


def _plain_text(chunk: ChatGenerationChunk) -> bool:
    message = chunk.message
    return (
        type(message) is AIMessageChunk
        and chunk.generation_info is None
        and isinstance(message.content, str)
        and not message.tool_call_chunks
        and not message.additional_kwargs
        and not message.response_metadata
        and message.usage_metadata is None
        and message.chunk_position is None
        and message.name is None
    )


def _joined(run: list[ChatGenerationChunk]) -> ChatGenerationChunk:
    if len(run) == 1:
        return run[0]
    text = "".join(chunk.text for chunk in run)
    return ChatGenerationChunk(message=AIMessageChunk(content=text, id=run[0].message.id))
