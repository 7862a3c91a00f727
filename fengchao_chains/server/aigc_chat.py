"""``POST /aigc/chat/`` and ``POST /aigc/local_chat/``: the fengchao SDK's chat routes.

Both run the chat steps of :mod:`fengchao_chains.chains.chat` as plain calls: prepare, then
one model call, the only LangChain run of the request (the runnable ``chat_chain`` that
LangServe serves makes a run of every layer, which cost a quarter to a third of an answer's
CPU). The SDK's four modes are ``invoke``, ``stream`` (``data: {json}`` lines,
ASCII-escaped, no end marker), ``async`` (a task in PostgreSQL, answered with its 32-hex
id) and ``async_result`` (6602 while pending, the stored answer when done). Every 200
answer has the complete ChatCompletion shape the SDK parses
(:mod:`fengchao_chains.server.aigc_answer`).

Transport errors are HTTP statuses: 401 no or bad token, 440 unknown model, 441 a local model
on ``/aigc/chat/``, 442 an online model on ``/aigc/local_chat/``, 443 empty query, 444
unknown knowledge base, 445 bad parameters (body, prompt, files, task id). Business outcomes
are 200 answers whose ``status`` says what happened: 6601 sensitive words, 6602 not ready yet,
408 a model timeout, else the model's HTTP error status or 400.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.documents import Document
from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask

from fengchao_chains.callbacks import Bill
from fengchao_chains.catalog import LOCAL, ModelCard
from fengchao_chains.chains.chat import (
    CALLER_KEY,
    ChatInput,
    MaxTokens,
    Temperature,
    Threshold,
    TopK,
    TopP,
    answer_chat,
    aopen_answer,
    json_answer,
    prepare_chat,
)
from fengchao_chains.errors import FengchaoError, UnknownModelError
from fengchao_chains.gateway.auth import require_caller
from fengchao_chains.gateway.limit_types import RateLimitExceeded
from fengchao_chains.gateway.sensitive import SensitiveContentError
from fengchao_chains.gateway.tasks import Task
from fengchao_chains.llms.answer_first import RunTail
from fengchao_chains.runtime import Runtime
from fengchao_chains.server.aigc_answer import Answer, event_line, failure_status
from fengchao_chains.server.deps import app_runtime
from fengchao_chains.server.json_answers import JSONAnswer
from fengchao_chains.server.limits_http import aigc_rate_limit_response
from fengchao_chains.server.metering import Metering
from fengchao_chains.settings import describe_validation_error
from fengchao_chains.streaming import HEAD_HOLD_SECONDS, HangUpAwareStreamingResponse, LastPiece

router = APIRouter(prefix="/aigc", tags=["aigc"])

Mode = Literal["invoke", "async", "async_result", "stream"]


class AigcChatBody(BaseModel):
    """The body the SDK sends: all 25 keys, ``null`` for unset; unknown keys are ignored so
    newer clients keep working. ``image``, ``video``, ``agg_models`` and ``search_param`` are
    accepted and not used (no model here reads images; aggregation and web search are not
    offered), so ``agg`` and ``search`` answer ``[]``."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    query: str | None = None
    request_id: str | None = Field(default=None, max_length=128)
    system: str | None = None
    prompt: str | None = None
    prompt_fill: dict[str, Any] | None = None
    is_sensitive: bool | None = True
    sensitive_replace: bool | None = False
    task_id: str | None = None
    history: list[dict[str, Any]] | None = None
    response_format: Literal["text", "json"] | None = "text"
    do_sample: bool | None = True
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    knowledge: str | None = None
    top_k: TopK | None = None
    threshold: Threshold | None = None
    mode: Mode = "invoke"
    files: list[str] | str | None = None

    def chat_input(self) -> ChatInput:
        """The chain's input, from fields this body has validated with the input's own types
        and ranges (:data:`~fengchao_chains.chains.chat.TopK` and the rest), so it is not
        validated a second time (49 us of a request after an idle spell,
        docs/benchmarks.md, change 38)."""
        files = [self.files] if isinstance(self.files, str) else list(self.files or [])
        given: dict[str, Any] = {
            "model": self.model,
            "query": self.query or "",
            "system": self.system,
            "prompt": self.prompt,
            "prompt_fill": self.prompt_fill or {},
            "history": self.history or [],
            "request_id": self.request_id,
            "knowledge": self.knowledge,
            "top_k": self.top_k,
            "threshold": self.threshold,
            "files": files,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "do_sample": self.do_sample,
            "response_format": self.response_format,
            "is_sensitive": self.is_sensitive,
            "sensitive_replace": self.sensitive_replace,
        }
        return ChatInput.model_construct(**{k: v for k, v in given.items() if v is not None})


class RouteError(Exception):
    """A transport error: the HTTP status and the SDK's ``msg``."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


@router.post("/chat/", response_model=None)
async def chat(request: Request) -> Response:
    """Online models (channel 在线模型). Also the app's direct lane for this path
    (:class:`~fengchao_chains.server.asgi.GatewayApp`), so it takes only the request."""
    return await _serve(request, app_runtime(request), local=False)


@router.post("/local_chat/", response_model=None)
async def local_chat(request: Request) -> Response:
    """Local models (channel 本地模型); the direct lane's too, as :func:`chat`."""
    return await _serve(request, app_runtime(request), local=True)


async def _serve(
    request: Request, runtime: Runtime, *, local: bool
) -> JSONResponse | StreamingResponse:
    caller = (await require_caller(request)).api_key
    try:
        body = _parse(await request.body())
        card = _card(runtime, body.model, local=local)
        tail = RunTail()  # the model call's run; its id is the request's unless the SDK named it
        answer = Answer(card, body.request_id or str(tail.run_id))
        if body.mode == "async_result":
            return JSONResponse(await _async_result(runtime, caller, body, answer))
        if not (body.query or "").strip():
            raise RouteError(443, "query不能为空")
        chat_input = body.chat_input()
        if body.mode == "async":
            await _check_knowledge_base(runtime, chat_input)
        metering = Metering(runtime, caller, "aigc", answer.request_id)
        await metering.admit(card, lambda: [chat_input.model_dump()], chat_input.max_tokens)
        if body.mode == "async":
            return JSONResponse(await _submit(runtime, metering, body, chat_input, answer))
        if body.mode == "stream":
            return await _stream(runtime, metering, chat_input, answer, tail)
        try:  # the answer leaves first; the model's run ends after, then settling
            payload = await run_invoke(runtime, metering, chat_input, answer, tail)
        except BaseException:
            await metering.finish(tail)
            raise
        return JSONAnswer(payload, background=BackgroundTask(metering.finish, tail))
    except RouteError as exc:
        return JSONResponse({"status": exc.status, "msg": exc.msg}, status_code=exc.status)
    except RateLimitExceeded as exc:
        return aigc_rate_limit_response(exc)


def _parse(raw: bytes) -> AigcChatBody:
    try:
        return AigcChatBody.model_validate_json(raw)
    except ValidationError as exc:
        raise RouteError(445, describe_validation_error(exc, "参数错误")) from None


def _card(runtime: Runtime, model_id: str, *, local: bool) -> ModelCard:
    try:
        card = runtime.catalog[model_id]
    except UnknownModelError as exc:
        raise RouteError(440, f"模型不存在: {exc.args[0] if exc.args else model_id}") from None
    if local and card.channel != LOCAL:
        raise RouteError(442, f"在线模型却使用了本地接口: {model_id} is an online model")
    if not local and card.channel == LOCAL:
        raise RouteError(441, f"本地模型却使用了在线接口: {model_id} is a local model")
    return card


def run_config(metering: Metering) -> RunnableConfig:
    """The model call's config: the request's usage recorder (the catalog id it prices by
    is added by the chat steps), and who asked and which request, for tracing."""
    recorder = metering.recorder
    return {
        "configurable": {CALLER_KEY: metering.caller},
        "callbacks": [recorder],
        "metadata": {"request_id": recorder.request_id, "caller": metering.caller},
        "run_name": "aigc_chat",
    }


def _mapped(exc: FengchaoError) -> RouteError | None:
    """Errors that are transport statuses (raised before any token is spent)."""
    from fengchao_chains.gateway.conversations import ConversationIdError
    from fengchao_chains.gateway.uploads import UploadError
    from fengchao_chains.prompts.errors import PromptError
    from fengchao_chains.retrievers import UnknownKnowledgeBaseError

    if isinstance(exc, UnknownKnowledgeBaseError):
        return RouteError(444, f"知识库不存在: {exc}")
    if isinstance(exc, PromptError):
        return RouteError(445, f"参数错误: {exc}")
    if isinstance(exc, UploadError | ConversationIdError):
        return RouteError(445, f"参数错误: {exc}")
    if isinstance(exc, UnknownModelError):
        return RouteError(440, f"模型不存在: {exc}")
    return None


async def run_invoke(
    runtime: Runtime,
    metering: Metering,
    chat_input: ChatInput,
    answer: Answer,
    tail: RunTail | None = None,
) -> dict[str, Any]:
    """One whole answer in the SDK's shape (also what an async task stores). With ``tail``
    it is made as soon as the model has answered, before the model's run has ended
    (:mod:`fengchao_chains.llms.answer_first`): the caller finishes the tail after."""
    try:
        prepared = await prepare_chat(runtime, chat_input, metering.caller)
        message = await answer_chat(runtime, prepared, run_config(metering), tail)
    except FengchaoError as exc:
        if (route := _mapped(exc)) is not None:
            raise route from None
        return _error_answer(answer, exc)
    content: str = message.text
    if chat_input.response_format == "json":
        content = json_answer(content)
    return answer.payload(
        content,
        finish_reason=message.response_metadata.get("finish_reason") or "stop",
        usage=await answer_bill(metering, answer.card, tail),
        knowledge=prepared.documents,
    )


async def answer_bill(metering: Metering, card: ModelCard, tail: RunTail | None) -> Bill:
    """The usage an answer reports: the recorder's, with a call whose record may not have
    landed yet counted from the vendor's usage in the answer; a call without that usage
    is ended first, so the recorder has counted (estimated) it."""
    recorder = metering.recorder
    if tail is None:
        return recorder.bill(card.unit)
    if tail.usage is None:
        await tail.finish()
        return recorder.bill(card.unit)
    return recorder.bill(card.unit, ending=(tail.run_id, card.id, tail.usage))


async def _stream(
    runtime: Runtime, metering: Metering, chat_input: ChatInput, answer: Answer, tail: RunTail
) -> StreamingResponse:
    """Prepare first (so a bad knowledge base or prompt is still an HTTP status), then
    stream: delta chunks, then a closing chunk with the finish reason and the real usage.
    The model's run ends after the closing chunk has left, and the request is settled
    then, whatever way the stream ended (the client's leaving included)."""
    try:
        prepared = await prepare_chat(runtime, chat_input, metering.caller)
    except FengchaoError as exc:
        await metering.settle()
        if (route := _mapped(exc)) is not None:
            raise route from None
        return _event_stream(_single(_error_answer(answer, exc)))
    except BaseException:
        await metering.settle()
        raise
    try:  # the request on its way first: the response is set up while the vendor works
        chunks = await aopen_answer(runtime, prepared, run_config(metering), tail)
    except BaseException:
        await metering.finish(tail)
        raise
    events = _events(chunks, prepared.documents, answer, metering, tail)
    # on an idle server the head goes out while the vendor works, not with the first line
    head_hold = 0 if tail.answer_first else HEAD_HOLD_SECONDS
    return _event_stream(events, BackgroundTask(metering.finish, tail), head_hold=head_hold)


def _error_answer(answer: Answer, exc: FengchaoError) -> dict[str, Any]:
    """The answer to a chain that failed: 6601 for sensitive words, else the model's
    failure with its status (408 a timeout, else the vendor's HTTP status or 400)."""
    if isinstance(exc, SensitiveContentError):
        return answer.payload(None, status=6601, msg=f"包含敏感词: {exc}")
    return answer.payload(None, status=failure_status(exc), msg=f"模型调用异常: {exc}")


async def _events(
    chunks: AsyncIterator[AIMessageChunk],
    documents: list[Document],
    answer: Answer,
    metering: Metering,
    tail: RunTail,
) -> AsyncIterator[str | bytes]:
    """The SDK's lines: one per model chunk with text, then the closing line, which carries
    the response's end in its write."""
    finish: str | None = None
    index = 0
    answer.prime(documents)  # while the vendor works on the first chunk
    try:
        async for chunk in chunks:
            finish = chunk.response_metadata.get("finish_reason") or finish
            if text := chunk.text:
                yield answer.delta_line(text, index=index, knowledge=documents)
                index += 1
    except FengchaoError as exc:
        yield LastPiece(event_line(_error_answer(answer, exc)).encode())
        return
    bill = await answer_bill(metering, answer.card, tail)
    closing = answer.closing_line(
        index=index, finish_reason=finish or "stop", usage=bill, knowledge=documents
    )
    yield LastPiece(closing.encode())


async def _single(payload: dict[str, Any]) -> AsyncIterator[str]:
    yield event_line(payload)


def _event_stream(
    lines: AsyncIterator[str | bytes],
    background: BackgroundTask | None = None,
    *,
    head_hold: float = HEAD_HOLD_SECONDS,
) -> StreamingResponse:
    return HangUpAwareStreamingResponse(
        lines,
        media_type="text/event-stream; charset=utf-8",
        background=background,
        head_hold=head_hold,
    )


# --- async mode --------------------------------------------------------------------------


async def _submit(
    runtime: Runtime,
    metering: Metering,
    body: AigcChatBody,
    chat_input: ChatInput,
    answer: Answer,
) -> dict[str, Any]:
    """Queue the task with its reservation, which the worker settles once it has run."""
    payload = {
        "model": body.model,
        "request_id": answer.request_id,
        "chat": chat_input.model_dump(mode="json"),
        "reservation": metering.reservation.to_json() if metering.reservation else None,
    }
    try:
        task_id = await runtime.tasks.asubmit(metering.caller, payload)
    except BaseException:
        await metering.settle()
        raise
    return answer.payload(task_id)


async def _check_knowledge_base(runtime: Runtime, chat_input: ChatInput) -> None:
    """An async task's cheap checks before it is accepted (its answer comes much later)."""
    if chat_input.knowledge:
        from fengchao_chains.retrievers import KnowledgeBaseRegistry, UnknownKnowledgeBaseError

        try:
            await KnowledgeBaseRegistry(runtime.database).aget(chat_input.knowledge)
        except UnknownKnowledgeBaseError as exc:
            raise RouteError(444, f"知识库不存在: {exc}") from None


async def _async_result(
    runtime: Runtime, caller: str, body: AigcChatBody, answer: Answer
) -> dict[str, Any]:
    if not body.task_id:
        raise RouteError(445, "参数错误: task_id不能为空")
    task = await runtime.tasks.aget(caller, body.task_id)
    if task is None:
        raise RouteError(445, f"参数错误: 任务不存在或已过期: {body.task_id}")
    if task.status in ("pending", "running"):
        return answer.payload(None, status=6602, msg="异步结果未生成")
    if task.status == "failed" or task.result is None:
        return answer.payload(None, status=400, msg=f"任务执行失败: {task.error or ''}")
    return task.result


async def run_task(runtime: Runtime, task: Task) -> dict[str, Any]:
    """The task workers' handler: the stored request answered as ``invoke`` would, errors
    included (they become the answer's status: the client learns them from async_result)."""
    payload = task.payload
    card = runtime.catalog[payload["model"]]
    answer = Answer(card, payload["request_id"])
    metering = Metering.resumed(
        runtime,
        task.owner,
        "task",
        answer.request_id,
        reservation=payload.get("reservation"),
        unit=card.unit,
    )
    try:
        chat_input = ChatInput.model_validate(payload["chat"])
        return await run_invoke(runtime, metering, chat_input, answer)
    except RouteError as exc:
        return answer.payload(None, status=exc.status, msg=exc.msg)
    finally:
        await metering.settle()
