"""Assertions every vendor's tests share, so each vendor is held to the same contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessageChunk

M = TypeVar("M", bound=BaseChatModel)

# The standard parameters the payload tests set, each vendor mapping them onto its wire.
STANDARD_PARAMETERS: dict[str, Any] = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 50}


def tuned(model: M, **extra: Any) -> M:
    """``model`` with the standard parameters set, and ``extra`` fields."""
    return model.model_copy(update={**STANDARD_PARAMETERS, **extra})


def summed(chunks: Sequence[BaseMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert isinstance(total, AIMessageChunk)
    return total


def assert_answer(message: AIMessage, expected_text: str, expected_model: str | None) -> None:
    assert message.content == expected_text
    usage = message.usage_metadata
    assert usage is not None, "usage_metadata missing"
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    metadata = message.response_metadata
    assert metadata.get("finish_reason"), metadata
    if expected_model is not None:
        assert metadata.get("model_name") == expected_model, metadata


def assert_stream(chunks: list[Any], expected_text: str, expected_model: str | None) -> None:
    messages = [c for c in chunks]
    assert len([c for c in messages if c.usage_metadata]) == 1, "usage must come exactly once"
    assert len(messages) >= 2, "a stream should arrive in more than one chunk"
    assert_answer(summed(messages), expected_text, expected_model)


async def assert_four_modes(
    chat: BaseChatModel,
    *,
    expected_model: str | None = None,
    question: str = "hello world",
    expected_text: str | None = None,
) -> None:
    """invoke, stream, ainvoke and astream all give the same answer, usage and metadata."""
    expected = expected_text if expected_text is not None else f"Echo: {question}"
    answer = chat.invoke(question)
    assert isinstance(answer, AIMessage)
    assert_answer(answer, expected, expected_model)
    assert_stream(list(chat.stream(question)), expected, expected_model)
    answer = await chat.ainvoke(question)
    assert isinstance(answer, AIMessage)
    assert_answer(answer, expected, expected_model)
    assert_stream([c async for c in chat.astream(question)], expected, expected_model)
    batch = await chat.abatch([question, question])
    assert [m.content for m in batch] == [expected, expected]


def assert_no_secret(secret: str, *things: object) -> None:
    """``secret`` appears in no repr, str or args of ``things``."""
    for thing in things:
        for text in (repr(thing), str(thing), repr(getattr(thing, "args", ""))):
            assert secret not in text, f"secret leaked in {type(thing).__name__}"


class Tokens(BaseCallbackHandler):
    """Records the tokens a streamed run reports to its callbacks."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:  # type: ignore[override]
        self.tokens.append(token)
