"""One request's accounting, the same at every front door: its usage recorder and its
rate-limit reservation.

A front door makes a :class:`Metering` once it knows the caller, calls :meth:`admit` before
any work (a key over its RPM, TPM or budget is refused there, with nothing spent), runs the
chain with :attr:`recorder` in its callbacks, and calls :meth:`settle` when the request is
over, whatever way it ended: the reservation is then corrected to what the recorder counted.
Keys without limits cost nothing here: no token estimate, no database round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage

from fengchao_chains.callbacks.token_estimate import estimate_prompt_tokens, estimate_tokens
from fengchao_chains.callbacks.usage import FrontDoor, UsageRecorder
from fengchao_chains.catalog import ModelCard
from fengchao_chains.catalog.cards import EmbeddingCard
from fengchao_chains.errors import FengchaoError
from fengchao_chains.gateway.limit_types import Reservation
from fengchao_chains.llms.answer_first import RunTail

if TYPE_CHECKING:
    from fengchao_chains.runtime import Runtime

DEFAULT_TOP_K = 5
DEFAULT_CHUNK_SIZE = 400  # characters of an ingested chunk: at most as many tokens
KNOWLEDGE_HIT_OVERHEAD = 20  # its title and numbering in the instruction
METERING_KEY = "fengchao_metering"
"""Where LangServe runs carry their :class:`Metering` in ``configurable``."""


class Metering:
    def __init__(
        self, runtime: Runtime, caller: str, front_door: FrontDoor, request_id: str | None
    ) -> None:
        self.runtime = runtime
        self.caller = caller
        self.recorder: UsageRecorder = runtime.usage.recorder(caller, front_door, request_id)
        self.reservation: Reservation | None = None
        self.runs = 1
        """How many chain runs the request makes (a LangServe batch: one per input)."""
        self._unit = "CNY"

    @classmethod
    def resumed(
        cls,
        runtime: Runtime,
        caller: str,
        front_door: FrontDoor,
        request_id: str | None,
        *,
        reservation: dict[str, Any] | None,
        unit: str,
    ) -> Metering:
        """The metering of a request admitted elsewhere (an async task's submission)."""
        metering = cls(runtime, caller, front_door, request_id)
        metering.reservation = Reservation.from_json(reservation) if reservation else None
        metering._unit = unit
        return metering

    async def admit(
        self,
        card: ModelCard,
        chats: Callable[[], Iterable[dict[str, Any]]],
        max_tokens: int | None,
    ) -> None:
        """Reserve this request's share of the caller's limits (``chats``: its chat inputs,
        whose prompts are estimated; asked for only if the caller has limits); raises
        :class:`~fengchao_chains.gateway.limit_types.RateLimitExceeded` when over."""
        await self._reserve(
            card.unit,
            lambda: sum(estimate_chat_prompt(self.runtime, chat) for chat in chats()),
            max_tokens=max_tokens,
            cost=card.cost,
        )

    async def admit_messages(
        self, card: ModelCard, messages: Sequence[BaseMessage], max_tokens: int | None
    ) -> None:
        """:meth:`admit` for a request whose prompt messages are already rendered."""
        await self._reserve(
            card.unit,
            lambda: estimate_prompt_tokens(messages),
            max_tokens=max_tokens,
            cost=card.cost,
        )

    async def admit_texts(self, card: EmbeddingCard, texts: Sequence[str]) -> None:
        """:meth:`admit` for an embeddings request: its input's estimate, no completion."""
        await self._reserve(
            card.unit,
            lambda: sum(estimate_tokens(text) for text in texts),
            max_tokens=0,
            cost=lambda prompt, _completion: card.cost(prompt),
        )

    async def _reserve(
        self,
        unit: str,
        prompt_tokens: Callable[[], int],
        *,
        max_tokens: int | None,
        cost: Callable[[int, int], float],
    ) -> None:
        """The reservation (``max_tokens``: the completion the request may ask for); the
        prompt is estimated only for a key that has limits."""
        limiter = self.runtime.limits
        if await limiter.alimits(self.caller) is None:
            return
        estimate = prompt_tokens()
        completion = limiter.completion_allowance(max_tokens)
        self._unit = unit
        self.reservation = await limiter.aadmit(
            self.caller,
            prompt_tokens=estimate,
            max_tokens=max_tokens,
            cost_ceiling=cost(estimate, completion),
            unit=unit,
        )

    async def run_ended(self) -> None:
        """One of the request's runs ended; the last one settles."""
        self.runs -= 1
        if self.runs <= 0:
            await self.settle()

    async def finish(self, tail: RunTail) -> None:
        """End the request's model call (``tail``: what was left of its run once the answer
        was out, so its usage is recorded), then settle."""
        try:
            await tail.finish()
        finally:
            await self.settle()

    async def settle(self) -> None:
        """Correct the reservation to what was used (once; later calls do nothing). Shielded:
        a request cancelled because its client left still settles."""
        if self.reservation is None:
            return
        reservation, self.reservation = self.reservation, None
        recorder = self.recorder
        settling = self.runtime.limits.asettle(
            reservation,
            tokens=recorder.prompt_tokens + recorder.completion_tokens,
            cost=recorder.cost(self._unit),
            unit=self._unit,
        )
        await asyncio.shield(settling)


def estimate_chat_prompt(runtime: Runtime, chat: dict[str, Any]) -> int:
    """Prompt tokens a chat input will cost: its instruction rendered as the chain renders
    it (system prompt, history, template), plus room for the knowledge-base hits (``top_k``
    chunks of the ingestion's size) and the file context it may add. Meant to err high:
    the reservation is settled to the real count afterwards."""
    query = str(chat.get("query") or "")
    try:
        messages = runtime.prompts.messages(
            query,
            prompt=chat.get("prompt"),
            system=chat.get("system"),
            prompt_fill=chat.get("prompt_fill") or {},
            history=chat.get("history") or [],
        )
        tokens = estimate_prompt_tokens(messages)
    except (FengchaoError, TypeError, ValueError):  # the chain reports a bad instruction
        tokens = estimate_tokens(query)
    if chat.get("knowledge"):
        top_k = chat.get("top_k")
        hits = top_k if isinstance(top_k, int) else DEFAULT_TOP_K
        tokens += hits * (DEFAULT_CHUNK_SIZE + KNOWLEDGE_HIT_OVERHEAD)
    if chat.get("files"):
        tokens += runtime.settings.file_context_max_chars
    return tokens
