"""The request first, LangChain's start of the run after: a vendor model's request on its
way before LangChain has set up the call.

Before a chat model's ``_agenerate`` or ``_astream`` runs, LangChain converts the input,
configures the callbacks, starts the run on each of them (the gateway's usage recorder
among them) and checks its cache, rate limiter and streaming rules. On an idle gateway that
is 0.5 ms of each request, spent before the vendor has been asked (docs/benchmarks.md,
change 26), while the vendor then takes tens of milliseconds or more to answer. So the
gateway's front doors (:class:`~fengchao_chains.llms.answer_first.RunTail`) send the request
first and let LangChain start the run while the vendor works:

- :func:`send_ahead` starts the call's first half in a task: the request built exactly as
  the model's own ``_agenerate`` or ``_astream`` builds it, sent, and its answer (or a
  stream's head) read (``VendorChatModel._astart_call``). The task's first turn writes the
  request.
- The run, started next with the same messages and arguments, finds that task through a
  context variable keyed to the model (:func:`claim`) and goes on from its outcome instead
  of sending a request of its own. So the call is still one LangChain run, recorded once,
  with the vendor's answer or error; a run that is cancelled cancels the request.

Only where LangChain is sure to make that very call (:func:`can_send_ahead`): a vendor model
over the shared HTTP layer, messages with string content (which LangChain passes on as they
are), no rate limiter, for an answer no cache (either could keep LangChain from calling the
vendor or make it wait), LangChain's streaming rule agreeing with the mode, and no callback
handler that changes how the call is made (``astream_events``' and ``astream_log``'). A
request its run did not take up anyway is cancelled or released, with a warning
(:meth:`SentAhead.discard`).

The usage record's latency and time to first token are counted from the run's start, so
they leave out the fraction of a millisecond by which the request was ahead of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any, Protocol

from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

logger = logging.getLogger(__name__)

try:  # the handlers astream_events and astream_log add, which make LangChain stream
    from langchain_core.tracers._streaming import (
        _StreamingCallbackHandler,
        _V2StreamingCallbackHandler,
    )

    _STREAMING_HANDLERS: tuple[type, ...] | None = (
        _StreamingCallbackHandler,
        _V2StreamingCallbackHandler,
    )
except ImportError:  # pragma: no cover - another LangChain: no call is sent ahead
    _STREAMING_HANDLERS = None


class StartedCall(Protocol):
    """What a call's first half leaves (``VendorChatModel``'s ``StartedCall``)."""

    def close(self) -> None: ...


class SendsAhead(Protocol):
    """A chat model whose async modes begin with :meth:`_astart_call`."""

    async def _astart_call(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        stream: bool,
    ) -> StartedCall: ...


_offered: ContextVar[SentAhead | None] = ContextVar("fengchao_sent_ahead", default=None)


class SentAhead:
    """One call's request, sent before its run; taken up by the run (:func:`claim`) or
    discarded."""

    def __init__(self, model: BaseChatModel, task: asyncio.Task[StartedCall]) -> None:
        self.model = model
        self.task = task
        self.taken = False

    def offer(self) -> Token[SentAhead | None]:
        """Make it :func:`claim`-able in the current context (until :meth:`withdraw`)."""
        return _offered.set(self)

    @staticmethod
    def withdraw(token: Token[SentAhead | None]) -> None:
        _offered.reset(token)

    async def take(self) -> StartedCall:
        """The first half's outcome (its answer, or its error raised). Cancelled while
        waiting, the request is cancelled too, or released if it had just been answered."""
        try:
            return await self.task
        except asyncio.CancelledError:
            self._release()
            raise

    def discard(self, *, cancelled: bool = False) -> None:
        """Once the run is over: a request it did not take up is cancelled, or released
        if already answered. A run that ended on its own without taking it up failed before
        it got to the vendor, or took another path than :func:`can_send_ahead` foresaw, so
        that is logged as a warning; a run ``cancelled`` (its client left) is not."""
        if self.taken:
            return
        self.taken = True
        if not cancelled:
            logger.warning("a request sent ahead of its LangChain run was not taken up by it")
        self.task.cancel()
        self._release()

    def _release(self) -> None:
        task = self.task
        if task.done() and not task.cancelled() and task.exception() is None:
            task.result().close()


def send_ahead(
    model: BaseChatModel,
    messages: Any,
    config: RunnableConfig | None,
    kwargs: Mapping[str, Any],
    *,
    stream: bool,
) -> SentAhead | None:
    """Start the call's request (what ``model.ainvoke`` or ``model.astream`` with these
    arguments would send), if :func:`can_send_ahead` allows, else None. The caller offers
    it to the run (:meth:`SentAhead.offer`) and discards it once the run is over."""
    if not can_send_ahead(model, messages, config, kwargs, stream=stream):
        return None
    sender: SendsAhead = model  # type: ignore[assignment]
    call_kwargs = {key: value for key, value in kwargs.items() if key != "stop"}
    first_half = sender._astart_call(list(messages), kwargs.get("stop"), call_kwargs, stream=stream)
    return SentAhead(model, asyncio.get_running_loop().create_task(first_half))


def claim(model: BaseChatModel) -> Any:
    """For the model's ``_agenerate``/``_astream``: the awaitable outcome of the request sent
    ahead for this call, or None (none was, or it is another model's)."""
    ahead = _offered.get()
    if ahead is None or ahead.model is not model or ahead.taken:
        return None
    ahead.taken = True
    return ahead.take()


def can_send_ahead(
    model: BaseChatModel,
    messages: Any,
    config: RunnableConfig | None,
    kwargs: Mapping[str, Any],
    *,
    stream: bool,
) -> bool:
    """Whether LangChain's ``ainvoke`` (or ``astream``) of these arguments is sure to call
    the model's ``_agenerate`` (``_astream``) once, with these messages, and nothing else
    first that could stop or delay it."""
    return (
        _STREAMING_HANDLERS is not None
        and callable(getattr(model, "_astart_call", None))
        and _passed_on_as_they_are(messages)
        and _nothing_in_between(model, stream=stream)
        and _handlers_known(config)
        and _streams(model, kwargs, stream=stream) is stream
    )


def _passed_on_as_they_are(messages: Any) -> bool:
    """A list of messages with string content, which LangChain neither converts nor
    normalises."""
    return isinstance(messages, list) and all(
        isinstance(message, BaseMessage) and isinstance(message.content, str)
        for message in messages
    )


def _nothing_in_between(model: BaseChatModel, *, stream: bool) -> bool:
    """No rate limiter, and for an answer no cache LangChain would look in first."""
    if model.rate_limiter is not None:
        return False
    cache = model.cache
    return stream or cache is False or (cache is None and get_llm_cache() is None)


def _handlers_known(config: RunnableConfig | None) -> bool:
    """The call's handlers are the config's list (not a parent run's), and none of them
    makes LangChain stream."""
    if var_child_runnable_config.get() is not None:  # inside a run: its handlers apply too
        return False
    callbacks = (config or {}).get("callbacks")
    if callbacks is None:
        return True
    return isinstance(callbacks, list) and not any(
        isinstance(handler, _STREAMING_HANDLERS or ()) for handler in callbacks
    )


def _streams(model: BaseChatModel, kwargs: Mapping[str, Any], *, stream: bool) -> bool | None:
    """LangChain's own rule: whether this call goes to the model's ``_astream``."""
    call_kwargs = {**kwargs, "stream": True} if stream else dict(kwargs)
    try:
        return model._should_stream(async_api=True, **call_kwargs)
    except Exception:  # pragma: no cover - another LangChain's rule
        return None
