"""The OpenAI-compatible front door: ``/v1/chat/completions``, ``/v1/embeddings`` and
``/v1/models`` over every catalog model, in OpenAI's wire format (docs/openai-api.md).

A chat request is authenticated (a token, or the key pair ``<api_key>:<secret_key>`` as an
OpenAI client's ``api_key``), parsed, checked for sensitive words, optionally grounded in a
knowledge base or an instruction (the chat chain's own retrieval and rendering), then sent
straight to the catalog model: the model is built once per catalog id and the request's
sampling goes with the call, so the hot path is parse, one model call and rendering.
Every model call runs with :func:`run_config` (the usage recorder, the catalog id); the usage
in an answer is the vendor's, else the recorder's estimate.

Everything is refused before the first byte with an HTTP status in OpenAI's error shape; a
stream that fails once begun ends with an ``{"error": ...}`` event instead of ``[DONE]``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.runnables import RunnableConfig
from starlette.background import BackgroundTask

from fengchao_chains.callbacks import MODEL_METADATA_KEY
from fengchao_chains.callbacks.usage import FrontDoor, UsageRecorder
from fengchao_chains.catalog import ModelCard
from fengchao_chains.chains.chat import CALLER_KEY, json_answer
from fengchao_chains.gateway.auth import Caller
from fengchao_chains.gateway.sensitive import SensitiveContentError
from fengchao_chains.llms.answer_first import RunTail
from fengchao_chains.runtime import Runtime
from fengchao_chains.server import openai_v1_embeddings, openai_v1_models
from fengchao_chains.server.json_answers import JSONAnswer
from fengchao_chains.server.metering import Metering
from fengchao_chains.server.openai_v1_errors import (
    as_openai_error,
    authenticate,
    error_answer,
    invalid,
    runtime_of,
)
from fengchao_chains.server.openai_v1_extras import (
    add_response_format,
    apply_extras,
    check_input,
    sampling,
    wants_extras,
    with_json_instruction,
)
from fengchao_chains.server.openai_v1_wire import (
    DONE,
    ChatCompletionRequest,
    ChunkWriter,
    completion,
    completion_id,
    finish_reason,
    parse,
    to_messages,
)
from fengchao_chains.streaming import HangUpAwareStreamingResponse, LastPiece

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])
router.include_router(openai_v1_models.router)
router.include_router(openai_v1_embeddings.router)

FRONT_DOOR: FrontDoor = "v1"


def new_metering(runtime: Runtime, caller: Caller, request_id: str) -> Metering:
    """The request's usage recorder (front door ``v1``) and rate-limit reservation."""
    return Metering(runtime, caller.api_key, FRONT_DOOR, request_id)


def run_config(
    recorder: UsageRecorder, caller: Caller, card: ModelCard, request_id: str
) -> RunnableConfig:
    """The config of every model call this front door makes: the request's usage recorder,
    the model's catalog id (what the recorder prices it by) and who asked (which knowledge
    and files are looked up as)."""
    return {
        "configurable": {CALLER_KEY: caller.api_key},
        "callbacks": [recorder],
        "metadata": {
            MODEL_METADATA_KEY: card.id,
            "request_id": request_id,
            "caller": caller.api_key,
        },
        "run_name": "openai_v1_chat",
    }


@dataclass
class ChatCall:
    """One chat request made concrete: the model, its messages and the call's arguments."""

    card: ModelCard
    model: BaseChatModel
    messages: list[BaseMessage]
    kwargs: dict[str, Any]
    config: RunnableConfig
    metering: Metering
    tail: RunTail
    """The model's run once its answer is out: ended, then the request settled, after the
    answer has left (:mod:`fengchao_chains.llms.answer_first`)."""
    completion_id: str
    """The tail's run id as OpenAI's completion id (:func:`completion_id`)."""
    documents: list[Document] | None = None
    guard_output: bool = True
    fix_json: bool = False


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completions (``stream`` or not) over any catalog chat model."""
    runtime = runtime_of(request)
    try:
        caller = await authenticate(request)
        body = parse(ChatCompletionRequest, await request.body())
        call = await prepare(request, runtime, caller, body)
        if body.stream:
            return await _stream(runtime, call, include_usage=body.include_usage)
        try:
            payload = await _invoke(runtime, call)
        except BaseException:
            await call.metering.finish(call.tail)
            raise
        return JSONAnswer(payload, background=BackgroundTask(call.metering.finish, call.tail))
    except Exception as exc:
        return error_answer(exc)


async def prepare(
    request: Request, runtime: Runtime, caller: Caller, body: ChatCompletionRequest
) -> ChatCall:
    """Everything before the model call; raises OpenAIError or the library's errors."""
    card = runtime.catalog[body.model]
    if body.n not in (None, 1):
        raise invalid("n: only one choice per request (n=1) is supported", param="n")
    if body.logprobs:
        raise invalid("logprobs are not supported", param="logprobs")
    messages = to_messages(body.messages)
    sensitive = body.is_sensitive is not False
    if sensitive:
        check_input(runtime.sensitive_words, messages)
    documents = None
    if wants_extras(body):
        messages, documents = await apply_extras(runtime, body, card, messages)
    model = runtime.chat_model(card.id)
    kwargs = sampling(body)
    fix_json = add_response_format(body, model, kwargs)
    if fix_json:
        messages = with_json_instruction(messages)
    tail = RunTail()
    request_id = completion_id(tail.run_id)
    metering = new_metering(runtime, caller, request_id)
    await metering.admit_messages(card, messages, kwargs.get("max_tokens"))
    recorder = metering.recorder
    return ChatCall(
        card=card,
        model=model,
        messages=messages,
        kwargs=kwargs,
        config=run_config(recorder, caller, card, request_id),
        metering=metering,
        tail=tail,
        completion_id=request_id,
        documents=documents,
        guard_output=sensitive,
        fix_json=fix_json,
    )


async def _invoke(runtime: Runtime, call: ChatCall) -> dict[str, Any]:
    tail = call.tail
    message = await tail.ainvoke(call.model, call.messages, call.config, **call.kwargs)
    content: str = message.text
    finish = finish_reason(message.response_metadata.get("finish_reason"))
    if call.fix_json:
        content = json_answer(content)
    if call.guard_output and content:
        try:
            runtime.sensitive_words.check(content)
        except SensitiveContentError as exc:
            logger.info("/v1 answer withheld: %s", exc)
            content, finish = "", "content_filter"
    return completion(
        call.completion_id,
        call.card.id,
        message,
        content=content,
        finish=finish,
        usage=await answer_usage(message.usage_metadata, call.metering.recorder, tail),
        documents=call.documents,
    )


async def _stream(runtime: Runtime, call: ChatCall, *, include_usage: bool) -> Response:
    """Send the model's request, then set the response up while the vendor works. The head
    waits for the model's first chunk, so a refusal before any text is still an HTTP
    status (``early_failure``). The model's run ends after the last event has left, and the
    request is settled then, however the stream ended."""
    try:
        chunks = await call.tail.aopen_stream(call.model, call.messages, call.config, **call.kwargs)
    except BaseException:
        await call.metering.finish(call.tail)
        raise
    writer = ChunkWriter(call.completion_id, call.card.id, include_usage=include_usage)
    return HangUpAwareStreamingResponse(
        _events(runtime, call, writer, chunks),
        media_type="text/event-stream",
        background=BackgroundTask(call.metering.finish, call.tail),
        head_hold=None,
        early_failure=error_answer,
    )


async def _events(
    runtime: Runtime,
    call: ChatCall,
    writer: ChunkWriter,
    chunks: AsyncGenerator[AIMessageChunk, None],
) -> AsyncIterator[bytes]:
    """The stream's events, those of one model chunk as one piece (one write), the last
    ones (finish, usage, ``[DONE]``) with the response's end. The model's failure before its
    first chunk is raised (the response answers it with its HTTP status), a later one ends
    the stream as an error event."""
    guard = runtime.sensitive_words.guard(replace=False) if call.guard_output else None
    usage, finish, begun = None, None, False
    events = [writer.first(call.documents)]  # made while the vendor works, as is the guard
    try:
        first = await anext(chunks, None)
        begun = True
        async for chunk in _chain(first, chunks):
            text: str = chunk.text
            if guard is not None and text:
                text = guard.feed(text)
            if text:
                events.append(writer.text(text))
            if chunk.tool_call_chunks:
                events.append(writer.tool_calls(chunk.tool_call_chunks))
            usage = chunk.usage_metadata or usage
            finish = chunk.response_metadata.get("finish_reason") or finish
            if events:
                yield b"".join(events)
                events = []
        if guard is not None and (tail_text := guard.flush()):
            events.append(writer.text(tail_text))
    except SensitiveContentError as exc:
        logger.info("/v1 stream cut: %s", exc)
        finish = "content_filter"
    except Exception as exc:
        if not begun:
            raise
        yield LastPiece(b"".join(events) + as_openai_error(exc).event())
        return
    finally:
        await chunks.aclose()  # a stream cut short ends the model's run as aborted
    events.append(writer.finish(finish_reason(finish)))
    if writer.include_usage:
        events.append(writer.usage(await answer_usage(usage, call.metering.recorder, call.tail)))
    events.append(DONE)
    yield LastPiece(b"".join(events))


async def answer_usage(
    reported: UsageMetadata | None, recorder: UsageRecorder, tail: RunTail
) -> UsageMetadata:
    """The vendor's usage, else what the recorder counted (its estimate, once the model's
    run has ended): the answer shows the figures the call is billed by."""
    if reported:
        return reported
    await tail.finish()
    prompt, completion = recorder.prompt_tokens, recorder.completion_tokens
    return UsageMetadata(
        input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
    )


async def _chain(
    first: AIMessageChunk | None, rest: AsyncIterator[AIMessageChunk]
) -> AsyncIterator[AIMessageChunk]:
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk
