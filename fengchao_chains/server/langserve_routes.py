"""LangServe routes over the one chat chain, for LangChain clients and playground users.

* ``/chat``: chat with any catalog model chosen per request (``model``), the instruction
  library (``prompt``, ``system``, ``prompt_fill``), ``history`` and ``request_id`` memory;
  the output is the answer message.
* ``/knowledge``: knowledge-base chat (``knowledge``, ``top_k``, ``threshold``); the output
  is ``{"answer": message, "documents": [hits]}``, the hits streamed first.
* ``/instruct``: an instruction from the library (``prompt``, required) applied to
  ``query``.

Each has LangServe's ``invoke``, ``batch``, ``stream``, ``stream_events``, typed schemas and
``/playground/``. Every endpoint needs a caller: a token in ``Authorization`` (as the /aigc
routes) or the ``fengchao_token`` cookie that ``/login`` sets, which is how a browser reaches
the playground. ``per_req_config_modifier`` puts the authenticated caller and a usage
recorder into each run's config; a client cannot choose the caller.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnablePick
from langserve import add_routes
from pydantic import BaseModel, ConfigDict, Field

from fengchao_chains.catalog import ModelCard
from fengchao_chains.chains.chat import (
    CALLER_KEY,
    ChatInput,
    chat_chain,
    optional_without_null,
)
from fengchao_chains.errors import UnknownModelError
from fengchao_chains.gateway.auth import require_caller
from fengchao_chains.gateway.limit_types import RateLimitExceeded
from fengchao_chains.retrievers import NEWS_STORE
from fengchao_chains.runtime import Runtime
from fengchao_chains.server.limits_http import rate_limit_headers
from fengchao_chains.server.metering import METERING_KEY, Metering

AnswerMessage = AIMessage | AIMessageChunk
"""A whole answer (invoke) or its chunks (stream, or after the sensitive-word guard)."""
ANSWER_TYPE: Any = AnswerMessage


class KnowledgeChatInput(ChatInput):
    """A question answered from a knowledge base (the news store unless named)."""

    knowledge: str | None = Field(default=NEWS_STORE, description="Knowledge base id.")
    threshold: float = Field(
        default=500, ge=0, le=2000, description="Max cosine distance x 1000 of a hit (0: off)."
    )


class InstructInput(BaseModel):
    """An instruction of the library applied to a text."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=optional_without_null)

    prompt: str = Field(description="Instruction id (see /aigc/prompts/), e.g. 中译英.")
    query: str = Field(description="The text the instruction works on.")
    prompt_fill: dict[str, Any] = Field(default_factory=dict, description="Its variables.")
    model: str | None = Field(default=None, description="Catalog model id.")


class KnowledgeChatOutput(BaseModel):
    """The answer and the knowledge-base hits it was given (``[]`` without a knowledge
    base)."""

    answer: AnswerMessage
    documents: list[Document]


def mount(app: FastAPI, runtime_of: Any) -> None:
    """Add the routes; ``runtime_of(request)`` gives the started runtime (it exists only
    once the app's lifespan has run, so the chains are built per request over it)."""

    def chain_of(config: RunnableConfig) -> Runnable[Any, Any]:
        """The chat chain with the request's usage recorder. Attached here rather than in
        the config's callbacks, which LangServe's batch endpoint drops (it keeps only
        ``configurable``)."""
        runtime: Runtime = config["configurable"]["fengchao_runtime"]
        metering: Metering = config["configurable"][METERING_KEY]
        return chat_chain(runtime).with_config(callbacks=[metering.recorder])

    async def per_request(config: dict[str, Any], request: Request) -> dict[str, Any]:
        known = getattr(request.state, "caller", None)  # the route dependency verified it
        caller = (known or await require_caller(request)).api_key
        runtime = runtime_of(request)
        metering = Metering(runtime, caller, "langserve", request.headers.get("x-request-id"))
        await _admit(metering, runtime, request)
        configurable = dict(config.get("configurable") or {})
        configurable[CALLER_KEY] = caller
        configurable["fengchao_runtime"] = runtime
        configurable[METERING_KEY] = metering
        metadata = dict(config.get("metadata") or {}) | {"caller": caller}
        return config | {"configurable": configurable, "metadata": metadata}

    def chain(input_type: type[BaseModel], *, prepare: Any = None) -> Runnable[Any, Any]:
        """The chat chain behind a typed input (``prepare`` adapts it to ChatInput)."""

        def run(inputs: Any, config: RunnableConfig) -> Runnable[Any, Any]:
            data = inputs.model_dump() if isinstance(inputs, BaseModel) else dict(inputs)
            given = prepare(data) if prepare else data
            return RunnableLambda(lambda _: given) | chain_of(config)

        output_type: Any = KnowledgeChatOutput  # a pydantic model, as LangServe takes
        return (
            RunnableLambda(run, name="fengchao_chat")
            .with_alisteners(on_end=_settle, on_error=_settle)
            .with_types(input_type=input_type, output_type=output_type)
        )

    common: dict[str, Any] = {
        "per_req_config_modifier": per_request,
        "dependencies": [Depends(require_caller)],
    }
    add_routes(
        app,
        (chain(ChatInput) | RunnablePick("answer")).with_types(output_type=ANSWER_TYPE),
        path="/chat",
        **common,
    )
    add_routes(
        app,
        chain(KnowledgeChatInput),
        path="/knowledge",
        **common,
    )
    add_routes(
        app,
        (
            chain(InstructInput, prepare=lambda data: data | {"is_sensitive": True})
            | RunnablePick("answer")
        ).with_types(output_type=ANSWER_TYPE),
        path="/instruct",
        **common,
    )


async def _admit(metering: Metering, runtime: Runtime, request: Request) -> None:
    """Reserve the request's share of its key's limits (a batch: all its inputs at once);
    over a limit is HTTP 429 with ``Retry-After``. The run's end settles it (:func:`_settle`)."""
    if await runtime.limits.alimits(metering.caller) is None:
        return  # no limits: not even the body is looked at
    try:
        body = await request.json()
    except ValueError:
        return  # LangServe answers the malformed body itself
    body = body if isinstance(body, dict) else {}
    inputs = body["inputs"] if isinstance(body.get("inputs"), list) else [body.get("input")]
    chats = [item for item in inputs if isinstance(item, dict)] or [{}]
    metering.runs = len(chats)
    # every input's own max_tokens, or the default allowance for one that sets none
    caps = [chat.get("max_tokens") for chat in chats]
    allowance = sum(
        runtime.limits.completion_allowance(cap if isinstance(cap, int) else None) for cap in caps
    )
    try:
        await metering.admit(_card(runtime, chats[0].get("model")), lambda: chats, allowance)
    except RateLimitExceeded as exc:
        raise HTTPException(429, exc.message, headers=rate_limit_headers(exc)) from None


def _card(runtime: Runtime, model: Any) -> ModelCard:
    """The requested model's card, the default model's for the estimate when it is not one
    (the chain then refuses the request itself)."""
    default = runtime.settings.default_model
    try:
        return runtime.catalog[str(model or default)]
    except UnknownModelError:
        return runtime.catalog[default]


async def _settle(run: Any, config: RunnableConfig) -> None:
    """A run ended (or failed): settle the request once its last run (of a batch) has."""
    metering = (config.get("configurable") or {}).get(METERING_KEY)
    if isinstance(metering, Metering):
        await metering.run_ended()
