"""What every vendor chat model shares: standard parameters, the four call modes, usage.

A vendor module subclasses :class:`VendorChatModel` and fills in a few hooks: the request
for a conversation (one payload builder for streaming and not), how to sign it, how to read
an answer, a stream decoder for its SSE events and how to map its errors; where its API
falls short, an :class:`AnswerFilter` finishes the answer (stop sequences, usage estimates).
The four modes (``_generate``, ``_stream``, ``_agenerate``, ``_astream``) are written once
here, natively sync and async over the shared HTTP layer, so no vendor overrides them and
none wraps sync code in threads.

Usage and the response metadata (finish reason, model name, request id) travel on exactly
one chunk of a stream, the last, so adding the chunks up gives the right totals whatever
the vendor's own habit (cumulative usage on every chunk, usage split over two events, ...).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypedDict, Unpack, cast

import aiohttp
import httpx
import urllib3
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field

from fengchao_chains.llms import _http, _made_ahead
from fengchao_chains.llms._http import ResponseMeta, VendorRequest
from fengchao_chains.llms._sse import (
    EventReader,
    ServerSentEvent,
    aiter_event_batches,
    event_json,
    iter_event_batches,
)
from fengchao_chains.llms._standard import StandardChatModel
from fengchao_chains.llms.answer_first import hand_over
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContextTooLongError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.llms.request_first import claim

REQUEST_ID_HEADERS = (
    "x-request-id",
    "request-id",
    "x-baidu-request-id",
    "msh-request-id",
    "x-tt-logid",
    "x-log-id",
)


def usage(prompt_tokens: int | None, completion_tokens: int | None) -> UsageMetadata:
    """LangChain usage from a vendor's prompt and completion token counts."""
    input_tokens = int(prompt_tokens or 0)
    output_tokens = int(completion_tokens or 0)
    return UsageMetadata(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
    )


def openai_usage(raw: dict[str, Any] | None) -> UsageMetadata | None:
    """LangChain usage from the OpenAI-named counts most vendors report (None for none)."""
    if not raw:
        return None
    return usage(raw.get("prompt_tokens"), raw.get("completion_tokens"))


def result(
    text: str,
    *,
    usage_metadata: UsageMetadata | None,
    metadata: dict[str, Any],
    message_id: str | None = None,
) -> ChatResult:
    """A one-generation ChatResult (made ahead by an async call, :mod:`._made_ahead`);
    ``metadata`` becomes the message's response_metadata."""
    return _made_ahead.answer(
        text,
        usage_metadata=usage_metadata,
        response_metadata={k: v for k, v in metadata.items() if v is not None},
        message_id=message_id,
        generation_info={"finish_reason": metadata.get("finish_reason")},
    )


class StreamDecoder:
    """Turns one vendor's SSE events into chunks; subclasses implement :meth:`feed`.

    ``feed`` updates the state below and returns text chunks; ``done`` stops reading early
    (at ``[DONE]`` or the vendor's end event). :meth:`finish` then emits the one closing
    chunk that carries usage and the response metadata.

    The model feeds the events of one network read at a time (:meth:`feed_read`). With its
    ``coalesce_stream_text``, :meth:`text` holds the text back instead of making a chunk of
    each piece, and the read's text goes out as one chunk before any other chunk and at the
    read's end: the text that arrived together becomes one chunk, and the pieces never
    become chunks of their own. The text of the read that ends the stream goes out in the
    closing chunk itself (:meth:`finish`): a whole answer that arrives in one read is then
    one chunk, which LangChain, the guard and the front door handle once instead of twice.
    """

    end_event: ClassVar[str | None] = None
    """For vendors whose streams must close with an end event (``done``): what it is called.
    A stream that stops without it lost its end (finish reason, usage) and is an error."""

    def __init__(self, model: VendorChatModel, meta: ResponseMeta) -> None:
        self.model = model
        self.meta = meta
        self.done = False
        self.finish_reason: str | None = None
        self.model_name: str | None = meta.model or model.model
        self.request_id: str | None = meta.request_id
        self.message_id: str | None = None
        self.usage: UsageMetadata | None = None
        self.extra: dict[str, Any] = {}
        self.closing: ChatGenerationChunk | None = None
        """The closing chunk made ahead (:func:`._made_ahead.blank_closing`), for
        :meth:`finish` to fill in; None: it makes one."""
        self._held: list[str] = []

    def feed(self, event: ServerSentEvent) -> list[ChatGenerationChunk]:
        raise NotImplementedError

    def feed_read(
        self, events: list[ServerSentEvent]
    ) -> tuple[list[ChatGenerationChunk], VendorError | None]:
        """The chunks of one read's events, and the error one of them carried (a vendor's
        error mid-stream), which the caller raises after passing the chunks before it on,
        as it would have had the events arrived one read apart. Events after the end are
        dropped."""
        chunks: list[ChatGenerationChunk] = []
        for event in events:
            try:
                made = self.feed(event)
            except VendorError as error:
                return chunks + self._held_text(), error
            if made:
                chunks += self._held_text() + made
            if self.done:
                break
        if self.done and self.model.coalesce_stream_text:
            return chunks, None  # the text held goes in the closing chunk
        return chunks + self._held_text(), None

    def data(self, event: ServerSentEvent) -> dict[str, Any] | None:
        """An event's JSON object, or None for ``data: [DONE]``, which ends the stream
        (OpenAI's convention); anything else is an :class:`UpstreamError`."""
        if event.data.strip() == "[DONE]":
            self.done = True
            return None
        data = event_json(self.model, event)
        if not isinstance(data, dict):
            raise UpstreamError(
                f"unexpected stream event: {event.data[:200]!r}", vendor=self.model.vendor_name
            )
        return data

    def text(self, text: str) -> list[ChatGenerationChunk]:
        """A content chunk (none for empty text), or none and the text held back when
        coalescing."""
        if not text:
            return []
        self._held.append(text)
        return [] if self.model.coalesce_stream_text else self._held_text()

    def _held_text(self) -> list[ChatGenerationChunk]:
        """The text :meth:`text` held back, as one chunk (none if none)."""
        if not self._held:
            return []
        text = "".join(self._held)
        self._held.clear()
        return [ChatGenerationChunk(message=AIMessageChunk(content=text, id=self.message_id))]

    def finish(self) -> list[ChatGenerationChunk]:
        if self.end_event and not self.done:
            raise UpstreamError(
                f"the stream ended before {self.end_event}",
                vendor=self.model.vendor_name,
                request_id=self.request_id,
            )
        metadata = {
            "finish_reason": self.finish_reason,
            "model_name": self.model_name,
            "request_id": self.request_id,
            **self.extra,
        }
        blank, self.closing = self.closing or _made_ahead.blank_closing(), None
        chunk = _made_ahead.closing(
            blank,
            "".join(self._held),  # the last read's text, when coalescing
            usage_metadata=self.usage,
            response_metadata={k: v for k, v in metadata.items() if v is not None},
            message_id=self.message_id,
            generation_info={"finish_reason": self.finish_reason},
        )
        self._held.clear()
        return [chunk]


class AnswerFilter:
    """Adjusts one call's answer for what the vendor's API does not do itself (SenseNova's
    stop sequences, InternLM's usage estimate): the whole result, or each chunk of a stream
    (``None`` holds a chunk back). One is made per call, so it may keep state."""

    def whole(self, answer: ChatResult) -> ChatResult:
        return answer

    def chunk(self, chunk: ChatGenerationChunk) -> ChatGenerationChunk | None:
        return chunk

    def chunks(self, batch: list[ChatGenerationChunk]) -> list[ChatGenerationChunk]:
        """The chunks of one read that :meth:`chunk` lets through."""
        return [kept for raw in batch if (kept := self.chunk(raw)) is not None]


class RemoteChatModel(StandardChatModel):
    """A chat model served over HTTP: endpoint, timeout, retries and the error mapping every
    remote vendor shares (the vendor models below, and TGI through huggingface_hub)."""

    default_base_url: ClassVar[str] = ""

    timeout: float | None = Field(default=60.0, alias="request_timeout")
    """Seconds to wait for the vendor (connect, and each read); ``None`` waits forever."""
    max_retries: int = 2
    """Retries after the first attempt, on 429, 5xx and connection errors."""
    base_url: str | None = None

    def _forget_credentials(self) -> None:
        """Drop a cached token so the next attempt gets a fresh one."""

    def _url(self, path: str) -> str:
        return (self.base_url or self.default_base_url).rstrip("/") + path

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**super()._identifying_params, "base_url": self._url("")}

    def _error(
        self, status: int | None, message: str, **details: Unpack[ErrorDetails]
    ) -> VendorError:
        """The project error for an HTTP status (or an explicit ``kind``)."""
        return vendor_error(self.vendor_name, status, message, **details)

    def _as_kind(
        self, error: VendorError, kind: type[VendorError] | None, meta: ResponseMeta | None
    ) -> VendorError:
        """``error`` made a ``kind`` (for vendors whose codes say more than the HTTP status);
        unchanged if it already is one or ``kind`` is None."""
        if kind is None or isinstance(error, kind):
            return error
        return self._error(error.status_code, error.message, code=error.code, meta=meta, kind=kind)


@dataclass
class StartedCall:
    """An async call whose request has been answered: its whole answer, or a stream's
    head and the stream itself, which its holder must :meth:`close`."""

    answer: AnswerFilter
    meta: ResponseMeta
    body: Any = None
    opened: _http.OpenedStream | None = None

    def close(self) -> None:
        """Release the stream's connection (to the pool if it was read to its end)."""
        if self.opened is not None:
            _http.let_go(self.opened.response)


class VendorChatModel(RemoteChatModel):
    """Base of the vendor chat models over the shared HTTP layer; not used directly."""

    http_client: urllib3.PoolManager | None = Field(default=None, exclude=True)
    """A urllib3 pool manager of your own for sync calls (a ``ProxyManager`` for a proxy,
    ``ssl_context=`` for certificates); default: the shared pool."""
    http_async_client: aiohttp.ClientSession | None = Field(default=None, exclude=True)
    """An aiohttp session of your own for async calls; default: the shared pool."""
    coalesce_stream_text: bool = False
    """Stream the text deltas that arrive in one network read as one chunk: the same text at
    the same moment, in fewer chunks (:class:`StreamDecoder`). A vendor streams a token per
    event, usually spaced by its own generation time, so a read holds one; several arrive
    together from a vendor or proxy that sends in bursts, or as a backlog while a busy
    server was working on other streams. Handing those on one by one gains the reader
    nothing and costs per chunk (LangChain's callback dispatch, and in the gateway the
    guard and the client's line), the cost that grows with load. Off by default, so a
    stream has one chunk per vendor event; the gateway turns it on for its own calls
    (``FENGCHAO_STREAM_COALESCING``)."""

    # ------------------------------------------------------------------ vendor hooks

    def _chat_request(
        self, messages: list[BaseMessage], params: dict[str, Any], *, stream: bool
    ) -> VendorRequest:
        """The request for a conversation; ``params`` are the standard parameters that are
        set (temperature, top_p, max_tokens, stop) merged with model_kwargs and call kwargs."""
        raise NotImplementedError

    def _parse_response(self, body: Any, meta: ResponseMeta) -> ChatResult:
        raise NotImplementedError

    def _stream_decoder(self, meta: ResponseMeta) -> StreamDecoder:
        raise NotImplementedError

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        """Authentication headers for one attempt (may fetch or mint a token)."""
        return {}

    async def _asign(self, request: VendorRequest) -> dict[str, str]:
        return self._sign(request)

    def _check_body(self, body: Any, meta: ResponseMeta) -> None:
        """Raise the vendor's error if a 200 answer carries one."""

    def _call_messages(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> list[BaseMessage]:
        """The conversation a call sends; a vendor takes its own call arguments out of
        ``kwargs`` here, before the rest become request parameters (Moonshot's ``files=``)."""
        return messages

    def _answer_filter(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AnswerFilter:
        """What adjusts this call's answer (by default nothing)."""
        return AnswerFilter()

    def _prepare(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        """A hook for vendors that must call the vendor before chatting (file uploads)."""
        return messages

    async def _aprepare(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        return messages

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError:
        """Map an HTTP error answer; the default reads OpenAI-style ``{"error": {...}}``."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or error)
            code = error.get("code") or error.get("type")
        else:
            message, code = (
                (str(body)[:300] if body else httpx.codes.get_reason_phrase(status)),
                None,
            )
        return self._error(status, message, code=code, meta=meta)

    # ------------------------------------------------------------------ shared helpers

    def _request_id(self, headers: Mapping[str, str], body: Any = None) -> str | None:
        for name in REQUEST_ID_HEADERS:
            if headers.get(name):
                return str(headers[name])
        if isinstance(body, dict):
            for key in ("request_id", "id", "log_id"):
                if isinstance(body.get(key), (str, int)):
                    return str(body[key])
        return None

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout)

    # ------------------------------------------------------------------ the four modes

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        messages = self._call_messages(messages, kwargs)
        answer = self._answer_filter(messages, stop, kwargs)
        request, asked = self._request(self._prepare(messages), stop, kwargs, stream=False)
        body, meta = _http.send(self, request, self.http_client)
        meta.model = asked
        return answer.whole(self._parse_response(body, meta))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        _made_ahead.make_answer_ahead()  # while the vendor works, if the request went ahead
        # a gateway may have sent the request before LangChain started the run
        call = await (claim(self) or self._astart_call(messages, stop, kwargs, stream=False))
        chat_result = call.answer.whole(self._parse_response(call.body, call.meta))
        await hand_over(self, chat_result)  # a gateway answers before LangChain's run ends
        return chat_result

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        messages = self._call_messages(messages, kwargs)
        answer = self._answer_filter(messages, stop, kwargs)
        request, asked = self._request(self._prepare(messages), stop, kwargs, stream=True)
        with _http.open_stream(self, request, self.http_client) as opened:
            opened.meta.model = asked
            batches: Iterable[list[ChatGenerationChunk]]
            if not opened.is_sse:
                batches = [_whole(self._parse_response(opened.whole_body, opened.meta))]
            else:
                batches = self._decode(iter_event_batches(self, opened.response), opened.meta)
            for batch in batches:
                for chunk in answer.chunks(batch):
                    if run_manager and chunk.text:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        closing = _made_ahead.blank_closing()  # while the vendor works, as for an answer
        reader = EventReader()  # likewise
        call = await (claim(self) or self._astart_call(messages, stop, kwargs, stream=True))
        opened = cast(_http.OpenedStream, call.opened)  # a stream's first half opens it
        try:
            batches: AsyncIterator[list[ChatGenerationChunk]]
            if not opened.is_sse:
                batches = _aiter(_whole(self._parse_response(opened.whole_body, opened.meta)))
            else:
                events = aiter_event_batches(self, opened.response, reader)
                batches = self._adecode(events, opened.meta, closing)
            async for batch in batches:
                for chunk in call.answer.chunks(batch):
                    if run_manager and chunk.text:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
        finally:
            call.close()

    async def _astart_call(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        stream: bool,
    ) -> StartedCall:
        """The async modes' first half: the call's request sent, and its answer read (or,
        for a stream, its head). :mod:`~fengchao_chains.llms.request_first` runs it ahead of
        LangChain's run, which then takes it up."""
        messages = self._call_messages(messages, kwargs)
        answer = self._answer_filter(messages, stop, kwargs)
        request, asked = self._request(await self._aprepare(messages), stop, kwargs, stream=stream)
        if stream:
            opened = await _http.aopen(self, request, self.http_async_client)
            opened.meta.model = asked
            return StartedCall(answer, opened.meta, opened=opened)
        body, meta = await _http.asend(self, request, self.http_async_client)
        meta.model = asked
        return StartedCall(answer, meta, body=body)

    def _request(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        stream: bool,
    ) -> tuple[VendorRequest, str]:
        """A call's request, and the model it asks for (read before the builder may pop it)."""
        params = self._params(stop, **kwargs)
        asked = str(params.get("model") or self.model)
        return self._chat_request(messages, params, stream=stream), asked

    def _decode(
        self, batches: Iterator[list[ServerSentEvent]], meta: ResponseMeta
    ) -> Iterator[list[ChatGenerationChunk]]:
        """Each batch of events as the chunks it makes (events after the end are dropped),
        then the closing chunk."""
        decoder = self._stream_decoder(meta)
        for events in batches:
            chunks, error = decoder.feed_read(events)
            if decoder.done and error is None:  # the end: out first, then read to the end
                yield chunks + decoder.finish()
                with contextlib.suppress(VendorError):  # the answer is complete
                    for _ in itertools.islice(batches, AFTER_END_READS):
                        pass
                return
            yield chunks
            if error is not None:
                raise error
        yield decoder.finish()

    async def _adecode(
        self,
        batches: AsyncIterator[list[ServerSentEvent]],
        meta: ResponseMeta,
        closing: ChatGenerationChunk,
    ) -> AsyncIterator[list[ChatGenerationChunk]]:
        decoder = self._stream_decoder(meta)
        decoder.closing = closing
        async for events in batches:
            chunks, error = decoder.feed_read(events)
            if decoder.done and error is None:  # as in :meth:`_decode`
                yield chunks + decoder.finish()
                with contextlib.suppress(VendorError):  # the answer is complete
                    async for _ in _after_end(batches):
                        pass
                return
            yield chunks
            if error is not None:
                raise error
        yield decoder.finish()


AFTER_END_READS = 16
"""Network reads taken (and their events ignored) after a stream's end event, so the
response is read to its end and its connection goes back to the pool; a vendor that keeps
talking past that many gets its connection closed instead."""


async def _after_end(batches: AsyncIterator[list[ServerSentEvent]]) -> AsyncIterator[None]:
    count = 0
    async for _ in batches:
        count += 1
        if count >= AFTER_END_READS:
            return
        yield None


async def _aiter(batch: list[ChatGenerationChunk]) -> AsyncIterator[list[ChatGenerationChunk]]:
    yield batch


def _whole(chat_result: ChatResult) -> list[ChatGenerationChunk]:
    """A complete answer to a stream request, as a stream would carry it: the text, then
    the closing chunk with usage and the response metadata."""
    generation = chat_result.generations[0]
    message = generation.message
    chunks = []
    if message.content:
        chunks.append(
            ChatGenerationChunk(message=AIMessageChunk(content=message.content, id=message.id))
        )
    closing = AIMessageChunk(
        content="",
        id=message.id,
        usage_metadata=getattr(message, "usage_metadata", None),
        response_metadata=message.response_metadata,
        chunk_position="last",
    )
    chunks.append(ChatGenerationChunk(message=closing, generation_info=generation.generation_info))
    return chunks


class ErrorDetails(TypedDict, total=False):
    """What a vendor error may say beyond its status and message."""

    code: str | int | None
    """The vendor's own error code or type."""
    meta: ResponseMeta | None
    """The answer it came in (its request id, its ``Retry-After``)."""
    kind: type[VendorError] | None
    """The error class, when the vendor's code says more than the HTTP status."""


def vendor_error(
    vendor: str, status: int | None, message: str, **details: Unpack[ErrorDetails]
) -> VendorError:
    """``vendor``'s error for an HTTP status (or an explicit ``kind``), with the answer's
    request id and, for a rate limit, its ``Retry-After``."""
    meta = details.get("meta")
    fields: dict[str, Any] = {
        "vendor": vendor,
        "status_code": status,
        "code": details.get("code"),
        "request_id": meta.request_id if meta else None,
    }
    kind = details.get("kind") or _kind_for_status(status, message)
    if issubclass(kind, RateLimitError):
        return kind(message, retry_after=_retry_after(meta), **fields)
    return kind(message, **fields)


def _kind_for_status(status: int | None, message: str) -> type[VendorError]:
    lowered = message.lower()
    if status in (401, 403):
        return AuthenticationError
    if status == 429:
        return RateLimitError
    if status is not None and status >= 500:
        return UpstreamError
    if any(
        word in lowered
        for word in (
            "context length",
            "context_length",
            "too long",
            "maximum context",
            "exceeds the limit",
        )
    ):
        return ContextTooLongError
    if status is not None and 400 <= status < 500:
        return InvalidRequestError
    return UpstreamError


def _retry_after(meta: ResponseMeta | None) -> float | None:
    if meta is None:
        return None
    raw = meta.headers.get("retry-after-ms")
    if raw:
        try:
            return float(raw) / 1000
        except ValueError:
            pass
    raw = meta.headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds)
