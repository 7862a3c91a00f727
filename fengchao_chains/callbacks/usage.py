"""Usage of one request: a record per model call in it, against the caller.

Attached per request by every front door (LangServe's ``per_req_config_modifier``, /aigc,
/v1 and the async task workers), so a call is counted the same whichever door it came
through, streamed or not. A record is made exactly once per call, when LangChain reports its
end (``on_llm_end``) or its failure (``on_llm_error``, which also fires when the client
goes away in the middle of a stream: the task is cancelled or the generator closed, and the
chunks received so far come with the error).

Tokens are the vendor's figures from ``usage_metadata``. A call that ended without them (an
aborted or failed stream, or a vendor that reports no usage in streams) is counted with the
estimator of :mod:`fengchao_chains.callbacks.token_estimate`, prompt and completion alike,
and marked ``estimated``. The model is named by its catalog id, which the chains put in the
run's metadata under :data:`MODEL_METADATA_KEY` (a vendor's own model name would not find
the price).

Embeddings calls report to no LangChain callback; the ``/v1/embeddings`` route times the
call and hands its figures to :meth:`UsageRecorder.record_embedding`, which makes the same
kind of record (completion tokens 0, priced by the embedding model's card).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from uuid import UUID, uuid4

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, GenerationChunk, LLMResult

from fengchao_chains.callbacks.token_estimate import estimate_prompt_tokens, estimate_tokens
from fengchao_chains.catalog import Catalog
from fengchao_chains.catalog.cards import EmbeddingCard
from fengchao_chains.errors import UnknownModelError
from fengchao_chains.logging_setup import log_after_turn

logger = logging.getLogger(__name__)

MODEL_METADATA_KEY = "fengchao_model"
FrontDoor = Literal["aigc", "langserve", "v1", "task"]
Status = Literal["ok", "error", "aborted"]
ABORTS = (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt)
"""What a call fails with when its client went away rather than the model failing."""


@dataclass(frozen=True)
class UsageRecord:
    """One model call: who, which model, through which door, how long, how many tokens."""

    run_id: UUID
    caller: str
    model: str
    front_door: FrontDoor
    started_at: datetime
    ended_at: datetime
    latency_ms: float
    ttft_ms: float | None
    streamed: bool
    status: Status
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    cost: float
    unit: str
    request_id: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Bill:
    """What a request's answer reports it used: tokens, and their cost in one unit."""

    prompt_tokens: int
    completion_tokens: int
    cost: float


class UsageSink(Protocol):
    """Where finished records go (the server's :class:`~fengchao_chains.gateway.usage.UsageLog`)."""

    def add(self, record: UsageRecord) -> None: ...


@dataclass
class _Call:
    model: str
    messages: list[BaseMessage]
    started_at: datetime
    started: float
    first_token: float | None = None
    pieces: list[str] = field(default_factory=list)


class UsageRecorder(BaseCallbackHandler):
    """Makes one :class:`UsageRecord` per finished chat-model call of a request, keeps them
    in :attr:`records` and hands each to ``sink``."""

    run_inline = True  # records land in order, in the caller's thread or loop
    raise_error = False  # accounting never breaks an answer

    def __init__(
        self,
        caller: str,
        catalog: Catalog,
        *,
        front_door: FrontDoor = "langserve",
        sink: UsageSink | None = None,
        request_id: str | None = None,
    ) -> None:
        self.caller = caller
        self.catalog = catalog
        self.front_door: FrontDoor = front_door
        self.sink = sink
        self.request_id = request_id
        self.records: list[UsageRecord] = []
        self._calls: dict[UUID, _Call] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ totals ----------
    @property
    def prompt_tokens(self) -> int:
        return sum(record.prompt_tokens for record in self.records)

    @property
    def completion_tokens(self) -> int:
        return sum(record.completion_tokens for record in self.records)

    def cost(self, unit: str) -> float:
        """What the request's calls cost in ``unit`` (calls priced in another unit apart)."""
        return sum(record.cost for record in self.records if record.unit == unit)

    def bill(self, unit: str, *, ending: tuple[UUID, str, UsageMetadata] | None = None) -> Bill:
        """The request's tokens and cost in ``unit``. ``ending``: a call whose answer is out
        and whose run may not have ended yet (its run id, catalog id, and the vendor's usage
        in the answer), counted as its record will count it until the record has landed
        (:mod:`fengchao_chains.llms.answer_first`)."""
        prompt, completion, cost = self.prompt_tokens, self.completion_tokens, self.cost(unit)
        if ending is not None and all(record.run_id != ending[0] for record in self.records):
            _, model, usage = ending
            prompt += usage["input_tokens"]
            completion += usage["output_tokens"]
            priced, priced_unit = self._price(model, usage["input_tokens"], usage["output_tokens"])
            cost += priced if priced_unit == unit else 0.0
        return Bill(prompt, completion, cost)

    # ------------------------------------------------------------------ callbacks -------
    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        metadata = metadata or {}
        model = metadata.get(MODEL_METADATA_KEY) or metadata.get("ls_model_name") or "unknown"
        call = _Call(
            model=str(model),
            messages=[message for batch in messages for message in batch],
            started_at=datetime.now(UTC),
            started=time.perf_counter(),
        )
        with self._lock:
            self._calls[run_id] = call

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        call = self._calls.get(run_id)
        if call is None:
            return
        if call.first_token is None:
            call.first_token = time.perf_counter()
        text = chunk.message.text if isinstance(chunk, ChatGenerationChunk) else token
        call.pieces.append(text if isinstance(text, str) else "")

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id, response, "ok", None)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        response: LLMResult | None = None,
        **kwargs: Any,
    ) -> None:
        status: Status = "aborted" if isinstance(error, ABORTS) else "error"
        self._finish(run_id, response, status, type(error).__name__)

    # ------------------------------------------------------------------ the record ------
    def _finish(
        self, run_id: UUID, response: LLMResult | None, status: Status, error: str | None
    ) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None)
        if call is None:  # not a chat-model call this recorder saw start
            return
        ended = time.perf_counter()
        usage = _reported_usage(response)
        if usage is not None:
            prompt_tokens, completion_tokens = usage
            estimated = False
        elif status == "error" and not call.pieces:
            prompt_tokens = completion_tokens = 0  # refused before generating: nothing billed
            estimated = False
        else:
            prompt_tokens = estimate_prompt_tokens(call.messages)
            completion_tokens = estimate_tokens("".join(call.pieces) or _text(response))
            estimated = True
        cost, unit = self._price(call.model, prompt_tokens, completion_tokens)
        record = UsageRecord(
            run_id=run_id,
            caller=self.caller,
            model=call.model,
            front_door=self.front_door,
            started_at=call.started_at,
            ended_at=datetime.now(UTC),
            latency_ms=(ended - call.started) * 1000,
            ttft_ms=(call.first_token - call.started) * 1000 if call.first_token else None,
            streamed=call.first_token is not None,
            status=status,
            error=error,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            estimated=estimated,
            cost=cost,
            unit=unit,
            request_id=self.request_id,
        )
        self._keep(record)

    def record_embedding(
        self,
        card: EmbeddingCard,
        *,
        started_at: datetime,
        latency_ms: float,
        tokens: int,
        estimated: bool,
        status: Status,
        error: str | None,
    ) -> UsageRecord:
        """Record one embeddings call (``tokens``: its input, the vendor's count or an
        estimate), priced by ``card``, and return the record."""
        record = UsageRecord(
            run_id=uuid4(),
            caller=self.caller,
            model=card.id,
            front_door=self.front_door,
            started_at=started_at,
            ended_at=datetime.now(UTC),
            latency_ms=latency_ms,
            ttft_ms=None,
            streamed=False,
            status=status,
            error=error,
            prompt_tokens=tokens,
            completion_tokens=0,
            estimated=estimated,
            cost=card.cost(tokens),
            unit=card.unit,
            request_id=self.request_id,
        )
        self._keep(record)
        return record

    def _keep(self, record: UsageRecord) -> None:
        """Keep a finished record, hand it to the sink and log it."""
        with self._lock:
            self.records.append(record)
        if self.sink is not None:
            self.sink.add(record)
        log_after_turn(
            logger,
            logging.INFO,
            "usage caller=%s model=%s door=%s status=%s prompt_tokens=%d completion_tokens=%d"
            "%s cost=%.6f %s",
            record.caller,
            record.model,
            record.front_door,
            record.status,
            record.prompt_tokens,
            record.completion_tokens,
            " (estimated)" if record.estimated else "",
            record.cost,
            record.unit,
        )

    def _price(self, model: str, prompt_tokens: int, completion_tokens: int) -> tuple[float, str]:
        try:
            card = self.catalog[model]
        except UnknownModelError:
            return 0.0, "CNY"
        return card.cost(prompt_tokens, completion_tokens), card.unit


def _messages(response: LLMResult | None) -> list[AIMessage]:
    if response is None:
        return []
    return [
        generation.message
        for generations in response.generations
        for generation in generations
        if isinstance(generation, ChatGeneration) and isinstance(generation.message, AIMessage)
    ]


def _reported_usage(response: LLMResult | None) -> tuple[int, int] | None:
    """The vendor's (prompt, completion) tokens, summed over the generations; None if no
    generation carries usage."""
    usages = [message.usage_metadata for message in _messages(response) if message.usage_metadata]
    if not usages:
        return None
    return (
        sum(usage["input_tokens"] for usage in usages),
        sum(usage["output_tokens"] for usage in usages),
    )


def _text(response: LLMResult | None) -> str:
    return "".join(message.text for message in _messages(response))
