"""Answer first, end the run after: a chat model's answer in its caller's hands before
LangChain has finished the call.

Once a model has its answer, LangChain still post-processes the result, ends the run on
every callback (the gateway's usage recorder among them) and returns through ``ainvoke``'s
batch machinery, or through ``astream``'s last iteration. None of that changes the answer,
and at concurrency 1 it is 0.3-0.5 ms of the gateway's time per request (docs/benchmarks.md,
change 25). So the gateway's front doors write the answer first and let the run end while
the client reads it:

- :meth:`RunTail.ainvoke` runs ``model.ainvoke`` in a task of its own and returns the answer
  as soon as the model has it. :class:`~fengchao_chains.llms._base.VendorChatModel` hands its
  parsed result over (:func:`hand_over`, through a context variable the task inherits)
  before it returns the result to LangChain; any other chat model's answer comes when its
  run has ended, as with ``ainvoke``.
- :meth:`RunTail.astream` passes a model's stream on up to the chunk marked as the last
  (``chunk_position="last"``, which LangChain's own streams end with too) and keeps the rest
  of the iteration, the run's end, for later.

Either way the caller must ``await tail.finish()`` once it has answered (the gateway does in
the response's background task, before it settles the request's limits): every call is
still recorded exactly once, with its real status, before the request is over. The run
has the tail's :attr:`~RunTail.run_id`, and :attr:`~RunTail.usage` is the usage the vendor
reported in the answer: what a caller reports before the call's record has landed
(:meth:`~fengchao_chains.callbacks.usage.UsageRecorder.bill`). A caller that finds no usage
there (the recorder will estimate it) finishes the tail first and asks the recorder.

Only while the process is not busy (:data:`ANSWER_FIRST_UP_TO`): on a saturated server the
split cost more throughput than the latency it hides is worth, so there the run ends before
the answer and the tail has nothing left to do.

The same holds for the other end of the call: while not busy, a tail sends a vendor model's
request before LangChain starts the run, which then takes its answer up
(:mod:`fengchao_chains.llms.request_first`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextvars import ContextVar, copy_context
from typing import Any, cast
from uuid import uuid4

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import RunnableConfig

from fengchao_chains.llms.request_first import SentAhead, send_ahead

logger = logging.getLogger(__name__)

ANSWER_FIRST_UP_TO = 4
"""Model calls in flight in this process (started, not yet answered) up to which a call's
answer goes first. Above it the server is busy, and the run ends before the answer as with
plain ``ainvoke`` and ``astream``: splitting each request's work in two slices cost a
saturated server about a tenth of its throughput (docs/benchmarks.md, change 25), while the
latency it hides matters only on an idle core."""


class _Load:
    calls = 0  # in flight in this process: the event loop's thread only


_Waiting = tuple[BaseChatModel, "asyncio.Future[ChatResult | None]"]
_Call = tuple[BaseChatModel, LanguageModelInput, RunnableConfig | None, dict[str, Any]]
_waiting: ContextVar[_Waiting | None] = ContextVar("fengchao_answer_first", default=None)


class RunTail:
    """The rest of one model call once its answer is out: LangChain's end of the run."""

    def __init__(self) -> None:
        self.run_id = uuid4()
        """The model run's id (LangChain's, and its usage record's)."""
        self.usage: UsageMetadata | None = None
        """The usage the vendor reported in the answer (None: none, the recorder estimates)."""
        self._run: asyncio.Task[BaseMessage] | None = None
        self._stream: AsyncGenerator[AIMessageChunk, None] | None = None
        self._opening: _Opening | None = None

    @property
    def answer_first(self) -> bool:
        """Whether the call, once begun, goes answer first: the process was not busy
        (:data:`ANSWER_FIRST_UP_TO`). A front door may follow the same rule for its own
        work that pays only on an idle core."""
        return self._opening is not None and self._opening.answer_first

    @property
    def pending(self) -> bool:
        """Whether :meth:`finish` has a run to end (which may have ended on its own)."""
        return self._run is not None or self._stream is not None

    async def finish(self) -> None:
        """End the run (its callbacks run now), at once if nothing is left; once only. A
        failure this late cannot change the answer any more, so it is logged, not raised."""
        run, stream, self._run, self._stream = self._run, self._stream, None, None
        if self._opening is not None:  # a stream opened early and never read: withdrawn
            self._opening.close(left=True)
        try:
            if run is not None:
                await run
            if stream is not None:
                try:
                    async for _ in stream:
                        pass
                finally:
                    await stream.aclose()
        except Exception:
            logger.warning("a model call failed after its answer was sent", exc_info=True)

    async def ainvoke(
        self,
        model: BaseChatModel,
        messages: LanguageModelInput,
        config: RunnableConfig | None,
        **kwargs: Any,
    ) -> AIMessage:
        """``model.ainvoke(messages, config, **kwargs)``'s answer as soon as the model has
        it; the rest of the run is kept for :meth:`finish`. The model's errors are raised
        as ``ainvoke`` raises them. A caller cancelled while waiting (its client left)
        cancels the call and waits for it to end (LangChain records no end for a cancelled
        ``ainvoke``, with or without this)."""
        answer: BaseMessage
        opening = self._open((model, messages, config, kwargs), stream=False)
        if opening.answer_first:
            answer = await self._answer_first(model, messages, config, opening, **kwargs)
        else:  # busy: the run ends first (nothing was counted or sent ahead)
            opening.close(left=False)
            answer = await model.ainvoke(messages, self._config(config), **kwargs)
        if not isinstance(answer, AIMessage):  # pragma: no cover - chat models answer AIMessage
            raise TypeError(f"unexpected answer {type(answer).__name__}")
        self.usage = answer.usage_metadata
        return answer

    async def _answer_first(
        self,
        model: BaseChatModel,
        messages: LanguageModelInput,
        config: RunnableConfig | None,
        opening: _Opening,
        **kwargs: Any,
    ) -> BaseMessage:
        loop = asyncio.get_running_loop()
        handed: asyncio.Future[ChatResult | None] = loop.create_future()
        ahead = opening.ahead
        run: asyncio.Task[BaseMessage] | None = None
        try:
            if ahead is not None:
                await asyncio.sleep(0)  # the request's task writes it before the run starts
            context = copy_context()  # the run's: where it hands over, and finds the request
            context.run(_waiting.set, (model, handed))
            if ahead is not None:
                context.run(ahead.offer)
            call = model.ainvoke(messages, self._config(config), **kwargs)
            run = loop.create_task(call, context=context)
            run.add_done_callback(lambda _: _resolve(handed))
            result = await handed
        except BaseException:
            if run is not None:
                run.cancel()
                await asyncio.wait([run])
            opening.close(left=True)
            raise
        opening.close(left=False)  # warns if the run ended without taking the request up
        if result is None:  # the run ended first (any other model, or a failure)
            return run.result()
        self._run = run
        return result.generations[0].message

    def astream(
        self,
        model: BaseChatModel,
        messages: LanguageModelInput,
        config: RunnableConfig | None,
        **kwargs: Any,
    ) -> AsyncGenerator[AIMessageChunk, None]:
        """``model.astream(messages, config, **kwargs)`` up to its last chunk; the rest of
        the stream, the run's end, is kept for :meth:`finish`. Closed before the last chunk
        (a client that left), this closes the model's stream at once, so the call ends as
        aborted."""
        chunks = model.astream(messages, self._config(config), **kwargs)
        call = (model, messages, config, kwargs)
        return self._until_last(cast(AsyncGenerator[AIMessageChunk, None], chunks), call)

    async def aopen_stream(
        self,
        model: BaseChatModel,
        messages: LanguageModelInput,
        config: RunnableConfig | None,
        **kwargs: Any,
    ) -> AsyncGenerator[AIMessageChunk, None]:
        """:meth:`astream` with the model's request already on its way when this returns
        (sent ahead of the run, where it can be), so that what the caller does next, such
        as setting up its response, overlaps the vendor's work instead of delaying the
        request. A stream that is never iterated has its request withdrawn by
        :meth:`finish`."""
        chunks = model.astream(messages, self._config(config), **kwargs)
        call = (model, messages, config, kwargs)
        opening = self._open(call, stream=True)
        if opening.ahead is not None:
            await _written()
        stream = cast(AsyncGenerator[AIMessageChunk, None], chunks)
        return self._until_last(stream, call, opening)

    def _config(self, config: RunnableConfig | None) -> RunnableConfig:
        return {**(config or {}), "run_id": self.run_id}

    def _open(self, call: _Call, *, stream: bool) -> _Opening:
        """Count the call in flight and send its request ahead, unless the server is busy
        (then the run ends first, and nothing is sent ahead)."""
        answer_first = _Load.calls < ANSWER_FIRST_UP_TO
        ahead = send_ahead(*call, stream=stream) if answer_first else None
        _Load.calls += answer_first  # (after: a request that could not be sent is not counted)
        self._opening = _Opening(ahead, answer_first)
        return self._opening

    async def _until_last(
        self,
        chunks: AsyncGenerator[AIMessageChunk, None],
        call: _Call,
        opening: _Opening | None = None,
    ) -> AsyncGenerator[AIMessageChunk, None]:
        """``opening``: the stream's start, made by :meth:`aopen_stream` (its request
        written already); None: made here, as the first chunk is asked for."""
        written, kept, left = opening is not None, False, False
        try:
            if opening is None:
                opening = self._open(call, stream=True)
            chunk = await _first_chunk(chunks, opening.ahead, written=written)
            while chunk is not None:
                if chunk.usage_metadata:
                    self.usage = add_usage(self.usage, chunk.usage_metadata)
                # (a model LangChain does not stream answers with one whole AIMessage)
                if opening.answer_first and getattr(chunk, "chunk_position", None) == "last":
                    self._stream, kept = chunks, True
                    yield chunk
                    return
                yield chunk
                chunk = await anext(chunks, None)
        except (asyncio.CancelledError, GeneratorExit):
            left = True  # the caller stopped (its client left)
            raise
        finally:
            if opening is not None:
                opening.close(left=left)
            if not kept:
                await chunks.aclose()


class _Opening:
    """A call's start: whether it counts as in flight (:class:`_Load`), and its request
    sent ahead (or None). Closed once: by the call, or by :meth:`RunTail.finish` if a
    stream opened early never ran."""

    def __init__(self, ahead: SentAhead | None, answer_first: bool) -> None:
        self.ahead = ahead
        self.answer_first = answer_first
        self.closed = False

    def close(self, *, left: bool) -> None:
        """``left``: the caller stopped, so a request not taken up is no surprise."""
        if self.closed:
            return
        self.closed = True
        _Load.calls -= self.answer_first
        if self.ahead is not None:
            self.ahead.discard(cancelled=left)


async def _written() -> None:
    """Two turns of the loop, the request's task and then aiohttp's writer: the request
    sent ahead is written when this returns."""
    for _ in range(2):
        await asyncio.sleep(0)


async def _first_chunk(
    chunks: AsyncGenerator[AIMessageChunk, None], ahead: SentAhead | None, *, written: bool
) -> AIMessageChunk | None:
    """The stream's first chunk; with a request sent ahead, that is written first (unless
    it already is, ``written``) and offered to the run, which starts now."""
    if ahead is None:
        return await anext(chunks, None)
    if not written:
        await _written()
    offered = ahead.offer()
    try:
        return await anext(chunks, None)
    finally:
        ahead.withdraw(offered)


def _resolve(handed: asyncio.Future[ChatResult | None]) -> None:
    """The run has ended without handing its answer over: its result is the answer."""
    if not handed.done():
        handed.set_result(None)


async def hand_over(model: BaseChatModel, result: ChatResult) -> None:
    """Give ``result`` to the :meth:`RunTail.ainvoke` waiting for ``model`` (if one is), and let
    it answer before LangChain goes on: one turn of the event loop, in which the caller,
    woken first, makes and writes its answer (uvicorn writes each message at once)."""
    waiting = _waiting.get()
    if waiting is None or waiting[0] is not model or waiting[1].done():
        return
    waiting[1].set_result(result)
    await asyncio.sleep(0)
