"""A call's answer objects are made while the vendor works (``llms._made_ahead``): every
vendor's async answer and closing chunk are the objects made before the vendor answered,
and hold what objects built from the answer would."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import copy_context
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from fengchao_chains.llms import _made_ahead
from fengchao_chains.llms._base import VendorChatModel
from fengchao_chains.testing.fakes._common import FakeVendor, Fault
from tests.vendors.harness import HARNESSES, VendorHarness

VENDOR_MODELS = [h for h in HARNESSES if issubclass(h.chat_class, VendorChatModel)]
STREAMING = [h for h in VENDOR_MODELS if h.streams]
DELAY = 0.4  # the vendor's wait before it answers
USAGE = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
METADATA = {"finish_reason": "stop", "model_name": "m-1", "request_id": "req-9"}


class Made:
    """Spies on one of ``_made_ahead``'s factories (what it made, and when) while ``fake``
    waits :data:`DELAY` before its next answer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, fake: FakeVendor) -> None:
        self.made: list[tuple[float, Any]] = []
        real: Callable[[], Any] = getattr(_made_ahead, name)

        def spy() -> Any:
            made = real()
            self.made.append((time.monotonic(), made))
            return made

        monkeypatch.setattr(_made_ahead, name, spy)
        fake.inject(Fault.SLOW, delay=DELAY)
        self.start = time.monotonic()

    def while_the_vendor_worked(self) -> Any:
        """The one object made for the call, checked to be made before the vendor answered."""
        assert time.monotonic() - self.start >= DELAY
        [(at, made)] = self.made
        assert at - self.start < DELAY / 2
        return made


@pytest.mark.parametrize("harness", VENDOR_MODELS, ids=str)
async def test_an_answer_is_the_object_made_while_the_vendor_worked(
    harness: VendorHarness, fake: FakeVendor, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = Made(monkeypatch, "_blank_answer", fake)

    answer = await harness.model(url).ainvoke("one two three")

    result = made.while_the_vendor_worked()
    filled = result.generations[0].message  # the answer (or, filtered, its copy)
    assert answer.text and filled.text == answer.text
    assert filled.usage_metadata == answer.usage_metadata
    assert answer.response_metadata.get("finish_reason")


@pytest.mark.parametrize("harness", STREAMING, ids=str)
async def test_a_streams_closing_chunk_is_the_object_made_while_the_vendor_worked(
    harness: VendorHarness, fake: FakeVendor, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = Made(monkeypatch, "blank_closing", fake)

    chunks = [c async for c in harness.model(url).astream("one two three")]

    blank = made.while_the_vendor_worked()
    last = chunks[-1]  # the closing chunk (or, filtered, its copy)
    assert last.chunk_position == "last" and last.usage_metadata
    assert blank.message.usage_metadata == last.usage_metadata


def test_an_answer_made_ahead_holds_what_one_built_from_the_answer_would() -> None:
    built = ChatResult(
        generations=[
            ChatGeneration(
                message=AIMessage(
                    content="hello", usage_metadata=USAGE, response_metadata=METADATA, id="a-1"
                ),
                generation_info={"finish_reason": "stop"},
            )
        ]
    )

    def in_a_call() -> tuple[ChatResult, ChatResult]:
        _made_ahead.make_answer_ahead()
        first = answer_of("hello")
        return first, answer_of("hello")  # (nothing made ahead for a second answer)

    first, second = copy_context().run(in_a_call)

    for made in (first, second):
        assert made == built
        assert made.generations[0].text == "hello"
        message, expected = made.generations[0].message, built.generations[0].message
        assert message.model_fields_set == expected.model_fields_set
    assert first.generations[0] is not second.generations[0]  # each made one is used once


def test_a_closing_chunk_made_ahead_adds_up_as_one_built_from_the_stream_would() -> None:
    def built() -> ChatGenerationChunk:
        message = AIMessageChunk(
            content="world",
            usage_metadata=USAGE,
            response_metadata=METADATA,
            id="c-1",
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message, generation_info={"finish_reason": "stop"})

    filled = _made_ahead.closing(
        _made_ahead.blank_closing(),
        "world",
        usage_metadata=USAGE,  # type: ignore[arg-type]
        response_metadata=dict(METADATA),
        message_id="c-1",
        generation_info={"finish_reason": "stop"},
    )
    first = ChatGenerationChunk(message=AIMessageChunk(content="hello ", id="c-1"))

    assert filled == built()
    assert filled.text == "world"
    assert filled.message.model_fields_set == built().message.model_fields_set
    assert first + filled == first + built()
    assert (first + filled).text == "hello world"


def answer_of(text: str) -> ChatResult:
    return _made_ahead.answer(
        text,
        usage_metadata=USAGE,  # type: ignore[arg-type]
        response_metadata=dict(METADATA),
        message_id="a-1",
        generation_info={"finish_reason": "stop"},
    )
