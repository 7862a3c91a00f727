"""Usage of one request: tokens and cost of every model call in it, against the caller.

Attached per request by every front door (LangServe's ``per_req_config_modifier``, the /aigc
routes, async tasks), so a call is counted the same whichever door it came through, streamed
or not. The model is named by its catalog id, which the chat chain puts in the run's metadata
under :data:`MODEL_METADATA_KEY` (a vendor's own model name would not find the price).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from fengchao_chains.catalog import Catalog
from fengchao_chains.errors import UnknownModelError

logger = logging.getLogger(__name__)

MODEL_METADATA_KEY = "fengchao_model"


@dataclass(frozen=True)
class UsageRecord:
    caller: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    unit: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageRecorder(BaseCallbackHandler):
    """Collects one :class:`UsageRecord` per finished chat-model call of a request."""

    run_inline = True  # records land in order, in the caller's thread or loop

    def __init__(self, caller: str, catalog: Catalog) -> None:
        self.caller = caller
        self.catalog = catalog
        self.records: list[UsageRecord] = []
        self._models: dict[UUID, str] = {}
        self._lock = threading.Lock()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        model = (metadata or {}).get(MODEL_METADATA_KEY) or (metadata or {}).get("ls_model_name")
        with self._lock:
            self._models[run_id] = str(model or "unknown")

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            model = self._models.pop(run_id, "unknown")
        prompt_tokens = completion_tokens = 0
        for generations in response.generations:
            for generation in generations:
                message = generation.message if isinstance(generation, ChatGeneration) else None
                usage = message.usage_metadata if isinstance(message, AIMessage) else None
                if usage:
                    prompt_tokens += usage["input_tokens"]
                    completion_tokens += usage["output_tokens"]
        cost, unit = 0.0, "CNY"
        try:
            card = self.catalog[model]
        except UnknownModelError:
            pass
        else:
            cost, unit = card.cost(prompt_tokens, completion_tokens), card.unit
        record = UsageRecord(self.caller, model, prompt_tokens, completion_tokens, cost, unit)
        with self._lock:
            self.records.append(record)
        logger.info(
            "usage caller=%s model=%s prompt_tokens=%d completion_tokens=%d cost=%.6f %s",
            record.caller,
            record.model,
            record.prompt_tokens,
            record.completion_tokens,
            record.cost,
            record.unit,
        )

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._models.pop(run_id, None)
