"""Answer first, end the run after: a chat model's answer in its caller's hands before
LangChain has finished the call.

Once a model has its answer, LangChain still post-processes the result, ends the run on
every callback (the gateway's usage recorder among them) and returns through ``ainvoke``'s
batch machinery, or through ``astream``'s last iteration. None of that changes the answer,
and at concurrency 1 it is 0.4-0.7 ms of the gateway's time per request (docs/benchmarks.md,
change 25). So the gateway's front doors write the answer first and let the run end while
the client reads it:

- :func:`ainvoke_first` runs ``model.ainvoke`` in a task of its own and returns the answer as
  soon as the model has it. :class:`~fengchao_chains.llms._base.VendorChatModel` hands its
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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextvars import ContextVar
from typing import Any, cast
from uuid import uuid4

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import RunnableConfig

logger = logging.getLogger(__name__)

_Waiting = tuple[BaseChatModel, "asyncio.Future[ChatResult | None]"]
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

    @property
    def pending(self) -> bool:
        """Whether :meth:`finish` has a run to end (which may have ended on its own)."""
        return self._run is not None or self._stream is not None

    async def finish(self) -> None:
        """End the run (its callbacks run now), at once if nothing is left; once only. A
        failure this late cannot change the answer any more, so it is logged, not raised."""
        run, stream, self._run, self._stream = self._run, self._stream, None, None
        try:
            if run is not None:
                await run
            if stream is not None:
                await asyncio.sleep(0)  # the turn ends first: uvloop writes what was sent then
                try:
                    async for _ in stream:
                        pass
                finally:
                    await stream.aclose()
        except Exception:
            logger.warning("a model call failed after its answer was sent", exc_info=True)

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
        return self._until_last(cast(AsyncGenerator[AIMessageChunk, None], chunks))

    def _config(self, config: RunnableConfig | None) -> RunnableConfig:
        return {**(config or {}), "run_id": self.run_id}

    async def _until_last(
        self, chunks: AsyncGenerator[AIMessageChunk, None]
    ) -> AsyncGenerator[AIMessageChunk, None]:
        kept = False
        try:
            async for chunk in chunks:
                if chunk.usage_metadata:
                    self.usage = add_usage(self.usage, chunk.usage_metadata)
                if chunk.chunk_position == "last":
                    self._stream, kept = chunks, True
                    yield chunk
                    return
                yield chunk
        finally:
            if not kept:
                await chunks.aclose()


async def ainvoke_first(
    model: BaseChatModel,
    messages: LanguageModelInput,
    config: RunnableConfig | None,
    tail: RunTail,
    **kwargs: Any,
) -> AIMessage:
    """``model.ainvoke(messages, config, **kwargs)``'s answer as soon as the model has it;
    the rest of the run goes to ``tail``. The model's errors are raised as ``ainvoke``
    raises them; a caller cancelled while waiting (its client left) cancels the call and
    returns once the call has ended (and been recorded as aborted)."""
    loop = asyncio.get_running_loop()
    handed: asyncio.Future[ChatResult | None] = loop.create_future()
    token = _waiting.set((model, handed))
    try:
        run = loop.create_task(model.ainvoke(messages, tail._config(config), **kwargs))
    finally:
        _waiting.reset(token)  # the task has its own copy of the context
    run.add_done_callback(lambda _: _resolve(handed))
    try:
        result = await handed
    except BaseException:
        run.cancel()
        await asyncio.wait([run])
        raise
    answer: BaseMessage
    if result is None:  # the run ended first (any other model, or a failure)
        answer = run.result()
    else:
        tail._run = run
        answer = result.generations[0].message
    if not isinstance(answer, AIMessage):  # pragma: no cover - chat models answer AIMessage
        raise TypeError(f"unexpected answer {type(answer).__name__}")
    tail.usage = answer.usage_metadata
    return answer


def _resolve(handed: asyncio.Future[ChatResult | None]) -> None:
    """The run has ended without handing its answer over: its result is the answer."""
    if not handed.done():
        handed.set_result(None)


async def hand_over(model: BaseChatModel, result: ChatResult) -> None:
    """Give ``result`` to the :func:`ainvoke_first` waiting for ``model`` (if one is), and let
    it answer before LangChain goes on: two turns of the event loop, the caller's, and the
    one at whose end the loop writes what the caller sent (uvloop holds a turn's writes
    until then)."""
    waiting = _waiting.get()
    if waiting is None or waiting[0] is not model or waiting[1].done():
        return
    waiting[1].set_result(result)
    for _ in range(2):
        await asyncio.sleep(0)
