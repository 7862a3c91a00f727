"""``POST /aigc/local_chat/``: the fengchao SDK's route for local models (channel 本地模型),
answered by the catalog's local models (the embedded llama.cpp model, TGI servers).

Modes ``invoke`` and ``stream``, with the instruction library (``prompt``, ``system``,
``prompt_fill``, ``history``). Every 200 answer has the complete ChatCompletion shape the
SDK parses, stream chunks included; a stream is ``data: {json}`` lines (ASCII-escaped) with
no end marker. Transport errors are HTTP statuses (440 unknown model, 442 an online model on
this route, 443 empty query, 445 bad parameters); a model's failure is a 200 answer whose
``status`` says what went wrong (408 timeout, else the error's HTTP status or 400).

The rest of the /aigc chat API (authentication, ``/aigc/chat/``, the async modes, knowledge
bases) belongs to the server issue; until then this route takes no credentials.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fengchao_chains.catalog import LOCAL, ModelCard, get_chat_model
from fengchao_chains.errors import FengchaoError, UnknownModelError
from fengchao_chains.llms.errors import VendorError, VendorTimeoutError
from fengchao_chains.prompts.errors import PromptError
from fengchao_chains.runtime import Runtime
from fengchao_chains.server.aigc import CREATED_FORMAT
from fengchao_chains.server.deps import RuntimeDep
from fengchao_chains.settings import describe_validation_error

router = APIRouter(prefix="/aigc", tags=["aigc"])

OK = "执行成功"


class ChatRequest(BaseModel):
    """The body the SDK sends (every key present, ``null`` for unset); unknown keys are
    ignored so newer clients keep working."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    query: str | None = None
    request_id: str | None = None
    system: str | None = None
    prompt: str | None = None
    prompt_fill: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    do_sample: bool | None = True
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    mode: Literal["invoke", "async", "async_result", "stream"] = "invoke"


class RouteError(Exception):
    """A transport error: the HTTP status and the SDK's ``msg``."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


@router.post("/local_chat/", response_model=None)
async def local_chat(request: Request, runtime: RuntimeDep) -> JSONResponse | StreamingResponse:
    try:
        body = _parse(await request.body())
        card = _local_card(runtime, body.model)
        if not (body.query or "").strip():
            raise RouteError(443, "query不能为空")
        if body.mode not in ("invoke", "stream"):
            raise RouteError(445, f"参数错误: mode {body.mode} is not served on this route yet")
        messages = runtime.prompts.messages(
            body.query or "",
            prompt=body.prompt,
            system=body.system,
            prompt_fill=body.prompt_fill,
            history=body.history or (),
        )
    except RouteError as exc:
        return JSONResponse({"status": exc.status, "msg": exc.msg}, status_code=exc.status)
    except PromptError as exc:
        return JSONResponse({"status": exc.code, "msg": f"参数错误: {exc}"}, status_code=exc.code)
    answer = _Answer(card, body.request_id or str(uuid.uuid4()))
    model = _model(runtime, card, body)
    if body.mode == "stream":
        return StreamingResponse(
            answer.stream(model, messages), media_type="text/event-stream; charset=utf-8"
        )
    try:
        message = await model.ainvoke(messages)
    except FengchaoError as exc:
        return JSONResponse(answer.failure(exc))
    return JSONResponse(answer.whole(message))


def _parse(raw: bytes) -> ChatRequest:
    try:
        return ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RouteError(445, describe_validation_error(exc, "参数错误")) from None


def _local_card(runtime: Runtime, model_id: str) -> ModelCard:
    try:
        card = runtime.catalog[model_id]
    except UnknownModelError as exc:
        raise RouteError(440, f"模型不存在: {exc.args[0] if exc.args else model_id}") from None
    if card.channel != LOCAL:
        raise RouteError(442, f"在线模型却使用了本地接口: {model_id} is an online model")
    return card


def _model(runtime: Runtime, card: ModelCard, body: ChatRequest) -> BaseChatModel:
    """The card's ChatModel with the request's sampling; ``do_sample: false`` is greedy."""
    overrides: dict[str, Any] = {"temperature": body.temperature, "top_p": body.top_p}
    if body.do_sample is False:
        overrides = {"temperature": 0}
    overrides["max_tokens"] = body.max_tokens
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return get_chat_model(card.id, catalog=runtime.catalog, settings=runtime.settings, **overrides)


class _Answer:
    """The SDK's ChatCompletion objects for one request."""

    def __init__(self, card: ModelCard, request_id: str) -> None:
        self.card = card
        self.request_id = request_id

    def payload(
        self,
        content: str | None,
        *,
        index: int = 0,
        finish_reason: str | None = None,
        usage: UsageMetadata | None = None,
        status: int = 200,
        msg: str = OK,
    ) -> dict[str, Any]:
        prompt_tokens = usage["input_tokens"] if usage else 0
        completion_tokens = usage["output_tokens"] if usage else 0
        choices = []
        if content is not None:
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                }
            )
        return {
            "request_id": self.request_id,
            "created": time.strftime(CREATED_FORMAT),
            "model": self.card.id,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "cost": round(self.card.cost(prompt_tokens, completion_tokens), 8),
            },
            "msg": msg,
            "knowledge": [],
            "status": status,
            "search": [],
            "agg": [],
        }

    def whole(self, message: AIMessage) -> dict[str, Any]:
        return self.payload(
            str(message.content),
            finish_reason=message.response_metadata.get("finish_reason"),
            usage=message.usage_metadata,
        )

    def failure(self, exc: FengchaoError) -> dict[str, Any]:
        """A model's failure, in the full shape (the SDK needs it) with the status in it."""
        status = 400
        if isinstance(exc, VendorTimeoutError):
            status = 408
        elif isinstance(exc, VendorError) and exc.status_code:
            status = exc.status_code
        return self.payload(None, status=status, msg=f"模型调用异常: {exc}")

    async def stream(self, model: BaseChatModel, messages: list[BaseMessage]) -> AsyncIterator[str]:
        """Delta chunks with ``finish_reason: null`` and zero usage, then a closing chunk
        with empty content, the finish reason and the real usage."""
        index = 0
        total: AIMessageChunk | None = None
        try:
            async for chunk in model.astream(messages):
                total = chunk if total is None else total + chunk
                if chunk.content:
                    yield _line(self.payload(str(chunk.content), index=index))
                    index += 1
        except FengchaoError as exc:
            yield _line(self.failure(exc))
            return
        metadata = total.response_metadata if total is not None else {}
        usage = total.usage_metadata if total is not None else None
        closing = self.payload(
            "", index=index, finish_reason=metadata.get("finish_reason") or "stop", usage=usage
        )
        yield _line(closing)


def _line(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
