"""A call's LangChain answer objects, made while the vendor works and filled in when its
answer comes.

Building an answer's ``AIMessage`` with its ``ChatGeneration`` and ``ChatResult`` (or a
stream's closing ``AIMessageChunk`` with its ``ChatGenerationChunk``) runs pydantic's
validation and LangChain's model validators: about 10 us back to back, but 125-190 us on a
core that has idled through the vendor's wait, as every call's core has at concurrency 1.
Writing the fields of objects made earlier costs 13-29 us there (docs/benchmarks.md,
change 29). So the async modes make their objects before they wait for the vendor, while
the core has nothing else to do, and the answer only fills them in:

- an answer's through :func:`make_answer_ahead`, which :func:`answer` takes up (the vendors'
  response parsers reach it through ``_base.result``);
- a stream's closing chunk made by :func:`blank_closing` and handed to its decoder.

The objects hold the same values either way (a test compares them with ones built
directly); only when the validation work is done changes. Each object made ahead is used
once: :func:`answer` takes it out of the context.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, TypedDict, Unpack

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

_answer_ahead: ContextVar[ChatResult | None] = ContextVar("fengchao_answer_ahead", default=None)


def make_answer_ahead() -> None:
    """Make the current call's answer objects now, for its :func:`answer` to fill in (in
    this context: the call's task)."""
    _answer_ahead.set(_blank_answer())


class Fields(TypedDict):
    """What an answer (or a closing chunk) carries besides its text."""

    usage_metadata: UsageMetadata | None
    response_metadata: dict[str, Any]
    message_id: str | None
    generation_info: dict[str, Any]


def answer(text: str, **fields: Unpack[Fields]) -> ChatResult:
    """A one-generation ``ChatResult``: the one :func:`make_answer_ahead` made for this call,
    filled in, or (none made) a new one."""
    made = _answer_ahead.get()
    if made is None:
        made = _blank_answer()
    else:
        _answer_ahead.set(None)
    _fill(made.generations[0], text, fields)
    return made


def blank_closing() -> ChatGenerationChunk:
    """A stream's closing chunk (``chunk_position="last"``), to be filled by :func:`closing`."""
    return ChatGenerationChunk(message=AIMessageChunk(content="", chunk_position="last"))


def closing(blank: ChatGenerationChunk, text: str, **fields: Unpack[Fields]) -> ChatGenerationChunk:
    """``blank`` (from :func:`blank_closing`, used once) filled in as the stream's closing
    chunk."""
    _fill(blank, text, fields)
    return blank


def _blank_answer() -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=AIMessage(content=""))])


def _fill(generation: ChatGeneration, text: str, fields: Fields) -> None:
    """The message's fields, and the generation's (its ``text`` is the one its validator
    copied from the message when the blank was made), written as pydantic's own
    ``__setattr__`` writes them for models that validate no assignment (into the instance's
    ``__dict__``, the name into its fields set) without its per-name dispatch, which is a
    first touch of more code on a cold core."""
    message = generation.message
    message.__dict__.update(
        content=text,
        id=fields["message_id"],
        usage_metadata=fields["usage_metadata"],
        response_metadata=fields["response_metadata"],
    )
    message.__pydantic_fields_set__.update(_MESSAGE_FIELDS)
    generation.__dict__.update(text=text, generation_info=fields["generation_info"])
    generation.__pydantic_fields_set__.update(_GENERATION_FIELDS)


_MESSAGE_FIELDS = ("content", "id", "usage_metadata", "response_metadata")
_GENERATION_FIELDS = ("text", "generation_info")
