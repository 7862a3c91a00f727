"""Reading a TGI stream, either route: text chunks as they come, stop sequences kept out,
then one closing chunk with usage and the response metadata (see :mod:`.tgi`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk

from fengchao_chains.llms._base import usage
from fengchao_chains.llms._messages import estimate_tokens, openai_messages

FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
"""TGI's finish reasons under the names every other vendor's answers use."""


def stop_at(text: str, stops: list[str]) -> int | None:
    """Where the first stop sequence in ``text`` begins (None: there is none). TGI leaves the
    stop sequence (and the rest of the token that completed it) in its answer; LangChain's
    convention is that an answer ends before it."""
    found = [text.index(stop) for stop in stops if stop and stop in text]
    return min(found) if found else None


def before_stop(text: str, stops: list[str]) -> str:
    cut = stop_at(text, stops)
    return text if cut is None else text[:cut]


class StreamDecoder:
    """One stream's state, for either route: text chunks as they come, then one closing
    chunk with usage (the server's, or an estimate flagged ``usage_estimated`` when it sent
    none) and the response metadata. Text that could be the start of a stop sequence is held
    back until it is known not to be one, since TGI sends the stop sequence itself."""

    def __init__(
        self,
        messages: list[BaseMessage],
        params: dict[str, Any],
        *,
        vendor: str,
        model_name: str,
        prompt: str | None = None,
    ) -> None:
        self.vendor = vendor
        self.messages = messages
        self.prompt = prompt  # the rendered prompt, on the /generate route
        self.model_name = model_name
        self.finish_reason: str | None = None
        self.usage: UsageMetadata | None = None
        self.pieces = 0
        self.generated: int | None = None  # /generate_stream's count, when input_length is not
        self.message_id: str | None = None
        self.fingerprint: str | None = None
        self.stops: list[str] = [s for s in params.get("stop") or [] if s]
        self.held = ""
        self.stopped = False

    def run(self, events: Iterator[Any]) -> Iterator[ChatGenerationChunk]:
        for event in events:
            yield from self.take(event)
        yield from self.finish()

    async def arun(self, events: AsyncIterator[Any]) -> AsyncIterator[ChatGenerationChunk]:
        async for event in events:
            for chunk in self.take(event):
                yield chunk
        for chunk in self.finish():
            yield chunk

    def take(self, event: Any) -> list[ChatGenerationChunk]:
        if hasattr(event, "choices"):
            return self._take_chat(event)
        return self._take_token(event)

    def _take_chat(self, event: Any) -> list[ChatGenerationChunk]:
        self.message_id = self.message_id or event.id or None
        self.model_name = event.model or self.model_name
        self.fingerprint = event.system_fingerprint or self.fingerprint
        if event.usage:
            self.usage = usage(event.usage.prompt_tokens, event.usage.completion_tokens)
        if not event.choices:
            return []
        choice = event.choices[0]
        reason = choice.finish_reason
        self.finish_reason = FINISH_REASONS.get(reason, reason) if reason else self.finish_reason
        return self._piece(choice.delta.content or "")

    def _take_token(self, event: Any) -> list[ChatGenerationChunk]:
        details = event.details
        if details is not None:
            self.finish_reason = FINISH_REASONS.get(details.finish_reason, details.finish_reason)
            input_length = getattr(details, "input_length", None)
            self.generated = details.generated_tokens
            if input_length is not None:
                self.usage = usage(input_length, details.generated_tokens)
        if event.token.special:
            return []
        return self._piece(event.token.text)

    def _piece(self, text: str) -> list[ChatGenerationChunk]:
        if not text:
            return []
        self.pieces += 1
        if self.stopped:
            return []
        self.held += text
        cut = stop_at(self.held, self.stops)
        if cut is not None:
            ready, self.held, self.stopped = self.held[:cut], "", True
            return self._text(ready)
        keep = max(
            (k for s in self.stops for k in range(1, len(s) + 1) if self.held.endswith(s[:k])),
            default=0,
        )
        ready, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return self._text(ready)

    def _text(self, text: str) -> list[ChatGenerationChunk]:
        if not text:
            return []
        return [ChatGenerationChunk(message=AIMessageChunk(content=text, id=self.message_id))]

    def finish(self) -> list[ChatGenerationChunk]:
        """The held-back text (which holds no stop sequence), then the closing chunk."""
        return [*self._text(self.held), self._closing()]

    def _closing(self) -> ChatGenerationChunk:
        metadata: dict[str, Any] = {
            "finish_reason": self.finish_reason,
            "model_name": self.model_name,
            "system_fingerprint": self.fingerprint,
        }
        if self.usage is None:
            prompt = self.prompt or "\n".join(
                m["content"] for m in openai_messages(self.messages, self.vendor)
            )
            self.usage = usage(estimate_tokens(prompt), self.generated or self.pieces)
            metadata["usage_estimated"] = True
        message = AIMessageChunk(
            content="",
            id=self.message_id,
            usage_metadata=self.usage,
            response_metadata={k: v for k, v in metadata.items() if v is not None},
            chunk_position="last",
        )
        return ChatGenerationChunk(
            message=message, generation_info={"finish_reason": self.finish_reason}
        )
