"""A fake of Hugging Face text-generation-inference (TGI 3.x's router) serving Qwen1.5-Chat.

It follows ``docs/vendors.md`` section 9, checked against TGI's ``router/src``:

* ``POST /generate`` answers ``{"generated_text", "details"}`` (``details`` only when asked) with
  the ``x-prompt-tokens``/``x-generated-tokens`` headers; ``POST /`` wraps it in a one-element
  list, or streams for ``"stream": true``; ``POST /generate_stream`` sends ``data:{json}`` per
  token and no terminator, its last event with ``generated_text`` and ``details`` (with
  ``input_length``; ``stream_input_length=False`` drops it and ``index``, as TGI 1.x). A natural
  end is the special eos token ``<|im_end|>`` (``eos_token``; counted, not in the text); past
  ``max_new_tokens`` (default 100) ``length``; a stop sequence ``stop_sequence``, kept in the text.
* ``POST /v1/chat/completions`` renders Qwen's ChatML (default system prompt inserted) and answers
  as TGI: ``id`` "", the served ``model``, ``system_fingerprint`` "3.3.7-native", finish ``stop``
  (eos), ``length`` or ``stop_sequence``; chunks repeat ``delta.role`` and carry ``usage: null``,
  eos is an empty delta with the finish reason, ``include_usage`` adds a ``choices: []`` usage
  chunk, then ``data: [DONE]``. Temperature 0 is greedy. ``messages_api=False``: 404, an old TGI.
* ``GET /info`` (limits from ``context_window``), ``/health`` (and ``/``, ``/ping``; 503 unless
  ``healthy``), ``/v1/models``; ``POST /tokenize``.
* The reply echoes the last ChatML user turn of ``inputs`` (or all of it); the prompt's length is
  the fake tokenizer's count of the raw ``inputs`` (of the rendered template, on the chat route).

Errors are ``{"error", "error_type"}``. TGI's validation, 422 ``validation`` with its messages:
temperature <= 0, top_p outside (0, 1), over 4 stop sequences, ``max_new_tokens`` <= 0, inputs +
``max_new_tokens`` over ``context_window`` (or Fault.CONTEXT_TOO_LONG), and when streaming
``best_of`` != 1 or ``decoder_input_details``. The stream routes report it in-band, as TGI does:
one error event on an HTTP 200. Scripted refusals are HTTP answers on every route (a proxy in front
of TGI gives them so; retriable before the first byte): RATE_LIMITED 429 ``overloaded`` with
Retry-After, SERVER_ERROR 424 ``generation``, UNAUTHORIZED/TOKEN_EXPIRED a gateway's 401 (also
without ``Authorization: Bearer <api_token>`` when ``api_token`` is set); SLOW waits first;
CONTENT_FILTERED has no TGI form and is ignored. MID_STREAM_ERROR sends a ``generation`` event
after ``after_chunks`` tokens (OpenAI-flavoured ``{"error": {"message", "http_status_code"}}``
and ``[DONE]`` on the chat route); CUT_STREAM drops the connection there.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fengchao_chains.testing.fakes._common import (
    FakeVendor,
    Fault,
    FaultSpec,
    answer_fault,
    content_text,
    count_tokens,
    paced,
    retry_after,
    split_tokens,
    sse_response,
    stream_error_at,
)

VERSION = "3.3.7"
FINGERPRINT = f"{VERSION}-native"
EOS, EOS_ID = "<|im_end|>", 151645
DEFAULT_SYSTEM = "You are a helpful assistant"
MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_NEW_TOKENS = 100
GENERATION_FAILED = "Request failed during generation: Server error: CUDA out of memory"
BAD_TOKEN = "Authorization header is correct, but the token seems invalid"
_INFO = {  # /info besides model_id and the token limits
    "model_sha": None,
    "model_pipeline_tag": "text-generation",
    "max_concurrent_requests": 128,
    "max_best_of": 2,
    "max_stop_sequences": MAX_STOP_SEQUENCES,
    "validation_workers": 2,
    "max_client_batch_size": 4,
    "router": "text-generation-router",
    "version": VERSION,
    "sha": None,
    "docker_label": None,
}
_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>|\Z)", re.DOTALL)


class TGIError(Exception):
    """An error TGI answers with ``status`` and ``{"error": message, "error_type": kind}``."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.kind}


def invalid(message: str) -> TGIError:
    return TGIError(422, f"Input validation error: {message}", "validation")


def chatml(messages: list[Any]) -> str:
    """Qwen1.5's chat template, with its default system prompt when the first turn is not one."""
    turns = [m if isinstance(m, dict) else {} for m in messages]
    if not turns or turns[0].get("role") != "system":
        turns = [{"role": "system", "content": DEFAULT_SYSTEM}, *turns]
    text = "".join(
        f"<|im_start|>{m.get('role')}\n{content_text(m.get('content'))}<|im_end|>\n" for m in turns
    )
    return text + "<|im_start|>assistant\n"


def token(text: str, n: int) -> dict[str, Any]:
    """One generated token as TGI reports it (ids and logprobs are made up, but stable)."""
    special = text == EOS
    token_id = EOS_ID if special else zlib.crc32(text.encode()) % 151643
    return {
        "id": token_id,
        "text": text,
        "logprob": round(-0.05 * (1 + n % 7), 2),
        "special": special,
    }


@dataclass
class Generation:
    """What the model made of one request."""

    tokens: list[dict[str, Any]]
    finish_reason: str  # TGI's names: length, eos_token, stop_sequence
    input_length: int
    seed: int | None

    def details(self, **extra: Any) -> dict[str, Any]:
        return {
            "finish_reason": self.finish_reason,
            "generated_tokens": len(self.tokens),
            "seed": self.seed,
            **extra,
        }

    @property
    def text(self) -> str:
        return "".join(t["text"] for t in self.tokens if not t["special"])

    @property
    def chat_finish(self) -> str:
        return "stop" if self.finish_reason == "eos_token" else self.finish_reason

    def headers(self) -> dict[str, str]:
        """Those TGI's non-stream answers carry."""
        prompt, generated = str(self.input_length), str(len(self.tokens))
        return {"x-prompt-tokens": prompt, "x-generated-tokens": generated}

    def usage(self) -> dict[str, int]:
        done = len(self.tokens)
        return {
            "prompt_tokens": self.input_length,
            "completion_tokens": done,
            "total_tokens": self.input_length + done,
        }


async def _frames(*frames: str) -> AsyncIterator[str]:
    for frame in frames:
        yield frame


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


@dataclass
class FakeTGI(FakeVendor):
    """TGI's router; ``api_token`` plays a gateway that wants a bearer token."""

    model_id: str = "Qwen/Qwen1.5-0.5B-Chat"
    healthy: bool = True
    messages_api: bool = True
    stream_input_length: bool = True
    api_token: str | None = None

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", partial(self.generate, stream=None), methods=["POST"]),
                Route("/generate", partial(self.generate, stream=False), methods=["POST"]),
                Route("/generate_stream", partial(self.generate, stream=True), methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/tokenize", self.tokenize, methods=["POST"]),
                Route("/info", self.info, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                *(Route(p, self.health, methods=["GET"]) for p in ("/health", "/", "/ping")),
            ]
        )

    # ----------------------------------------------------------------- admission

    async def _enter(
        self, request: Request, *, generation: bool = False, exists: bool = True
    ) -> tuple[Any, Response | None, FaultSpec | None]:
        """Record the request; its body, the refusal it gets (if any) and its scripted fault
        (only ``generation`` routes take one; a route that does not ``exist`` is a 404)."""
        body = await self.record_request(request)
        if not exists:
            return body, Response(status_code=404), None
        fault = self.next_fault() if generation else None
        await paced(fault)
        kind = fault.fault if fault else None
        wanted = None if self.api_token is None else f"Bearer {self.api_token}"
        if kind in (Fault.UNAUTHORIZED, Fault.TOKEN_EXPIRED) or (
            wanted is not None and request.headers.get("authorization") != wanted
        ):
            return body, self.error(TGIError(401, BAD_TOKEN, "authentication")), fault
        if isinstance(body, str):
            return body, PlainTextResponse("Failed to parse the request body as JSON", 400), fault
        refused = answer_fault(fault)
        if refused is not None and refused.fault is Fault.RATE_LIMITED:
            overloaded = TGIError(429, "Model is overloaded", "overloaded")
            return body, self.error(overloaded, retry_after(refused)), fault
        if refused is not None and refused.fault is Fault.SERVER_ERROR:
            return body, self.error(TGIError(424, GENERATION_FAILED, "generation")), fault
        return body, None, fault

    @staticmethod
    def error(error: TGIError, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @staticmethod
    def missing(field: str) -> Response:
        message = (
            f"Failed to deserialize the JSON body into the target type: missing field `{field}`"
        )
        return PlainTextResponse(message, status_code=422)

    def infer(
        self, inputs: str, params: dict[str, Any], streaming: bool, fault: FaultSpec | None
    ) -> Generation:
        """TGI's checks in its order (raising the validation error it sends), then the model."""
        if streaming and (params.get("best_of") or 1) != 1:
            raise invalid("`best_of` != 1 is not supported when streaming tokens")
        if streaming and params.get("decoder_input_details"):
            raise invalid("`decoder_input_details` == true is not supported when streaming tokens")
        temperature, top_p = params.get("temperature"), params.get("top_p")
        if temperature is not None and temperature <= 0:
            raise invalid("`temperature` must be strictly positive")
        if top_p is not None and not 0 < top_p < 1:
            raise invalid("`top_p` must be > 0.0 and < 1.0")
        max_new = params.get("max_new_tokens")
        max_new = DEFAULT_MAX_NEW_TOKENS if max_new is None else int(max_new)
        if max_new <= 0:
            raise invalid("`max_new_tokens` must be strictly positive")
        stop = params.get("stop") or []
        stop = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        if len(stop) > MAX_STOP_SEQUENCES:
            raise invalid(
                f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(stop)}"
            )
        if not inputs:
            raise invalid("`inputs` cannot be empty")
        length = count_tokens(inputs)
        if (
            fault and fault.fault is Fault.CONTEXT_TOO_LONG
        ) or length + max_new > self.context_window:
            raise invalid(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.context_window}."
                f" Given: {length} `inputs` tokens and {max_new} `max_new_tokens`"
            )
        # the model: the reply's tokens, then eos, cut by TGI's stopping criteria in its order
        turns = _USER_TURN.findall(inputs)
        pieces = [*split_tokens(self.reply(turns[-1] if turns else inputs)), EOS]
        tokens: list[dict[str, Any]] = []
        for n, piece in enumerate(pieces, 1):
            tokens.append(token(piece, n))
            stopped = any(s and s in "".join(t["text"] for t in tokens) for s in stop)
            if n >= max_new or piece == EOS or stopped:
                finish = (
                    "length" if n >= max_new else "eos_token" if piece == EOS else "stop_sequence"
                )
                return Generation(tokens, finish, length, params.get("seed"))
        raise AssertionError("unreachable: the eos token ends every reply")

    # ----------------------------------------------------------------- the generate routes

    async def generate(self, request: Request, *, stream: bool | None) -> Response:
        """``/generate`` (False), ``/generate_stream`` (True) or ``/`` (None: as the body says)."""
        body, refusal, fault = await self._enter(request, generation=True)
        if refusal is not None:
            return refusal
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            return self.missing("inputs")
        streaming = bool(body.get("stream")) if stream is None else stream
        params = body.get("parameters") or {}
        inputs: str = body["inputs"]
        stream_headers = {
            "x-compute-type": "gpu+optimized",
            "x-compute-characters": str(len(inputs)),
            "x-accel-buffering": "no",
        }
        try:
            generation = self.infer(inputs, params, streaming, fault)
        except TGIError as error:
            if streaming:
                return sse_response(
                    _frames(f"data:{_dumps(error.body())}\n\n"), headers=stream_headers
                )
            return self.error(error)
        prefix = inputs if params.get("return_full_text") else ""
        if streaming:
            events = self._token_events(generation, prefix, bool(params.get("details")), fault)
            return sse_response(events, headers=stream_headers)
        answer: dict[str, Any] = {"generated_text": prefix + generation.text}
        if params.get("details") or params.get("decoder_input_details"):
            prefill = [
                {"id": token(p, n)["id"], "text": p, "logprob": None if n == 0 else -0.5}
                for n, p in enumerate(split_tokens(inputs))
            ]
            prefill = prefill if params.get("decoder_input_details") else []
            answer["details"] = generation.details(prefill=prefill, tokens=generation.tokens)
        headers = generation.headers()
        return JSONResponse([answer] if stream is None else answer, headers=headers)

    async def _token_events(
        self, generation: Generation, prefix: str, details: bool, fault: FaultSpec | None
    ) -> AsyncIterator[str]:
        last = len(generation.tokens) - 1
        for n, tok in enumerate(generation.tokens):
            if stream_error_at(fault, n):
                failed = TGIError(424, GENERATION_FAILED, "generation")
                yield f"data:{_dumps(failed.body())}\n\n"
                return
            event: dict[str, Any] = {
                "index": n + 1,
                "token": tok,
                "generated_text": None,
                "details": None,
            }
            if n == last:
                event["generated_text"] = prefix + generation.text
                if details:
                    event["details"] = generation.details(input_length=generation.input_length)
            if not self.stream_input_length:
                del event["index"]
                if event["details"]:
                    del event["details"]["input_length"]
            yield f"data:{_dumps(event)}\n\n"

    # ----------------------------------------------------------------- the Messages API

    async def chat(self, request: Request) -> Response:
        body, refusal, fault = await self._enter(request, generation=True, exists=self.messages_api)
        if refusal is not None:
            return refusal
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return self.missing("messages")
        streaming = bool(body.get("stream"))
        temperature = body.get("temperature")
        params = {
            "max_new_tokens": body.get("max_tokens"),
            "stop": body.get("stop"),
            "temperature": None if temperature == 0 else temperature,  # 0: greedy
            "top_p": body.get("top_p"),
            "seed": body.get("seed"),
        }
        try:
            generation = self.infer(chatml(messages), params, streaming, fault)
        except TGIError as error:
            if streaming:
                return sse_response(_frames(self._chat_error(error), "data: [DONE]\n\n"))
            return self.error(error)
        if streaming:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return sse_response(self._chat_events(generation, include_usage, fault))
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": generation.text},
            "logprobs": None,
            "finish_reason": generation.chat_finish,
        }
        answer = {**self._head("chat.completion"), "choices": [choice], "usage": generation.usage()}
        return JSONResponse(answer, headers=generation.headers())

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "object": kind,
            "id": "",
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": FINGERPRINT,
        }

    @staticmethod
    def _chat_error(error: TGIError) -> str:
        event = {"error": {"message": error.message, "http_status_code": error.status}}
        return f"data: {_dumps(event)}\n\n"

    async def _chat_events(
        self, generation: Generation, include_usage: bool, fault: FaultSpec | None
    ) -> AsyncIterator[str]:
        head = self._head("chat.completion.chunk")
        last = len(generation.tokens) - 1
        for n, tok in enumerate(generation.tokens):
            if stream_error_at(fault, n):
                yield self._chat_error(TGIError(424, GENERATION_FAILED, "generation"))
                yield "data: [DONE]\n\n"
                return
            choice = {
                "index": 0,
                "delta": {"role": "assistant", "content": "" if tok["special"] else tok["text"]},
                "logprobs": None,
                "finish_reason": generation.chat_finish if n == last else None,
            }
            yield f"data: {_dumps({**head, 'choices': [choice], 'usage': None})}\n\n"
        if include_usage:
            yield f"data: {_dumps({**head, 'choices': [], 'usage': generation.usage()})}\n\n"
        yield "data: [DONE]\n\n"

    # ----------------------------------------------------------------- the other routes

    async def info(self, request: Request) -> Response:
        _, refusal, _ = await self._enter(request)
        limits = {
            "max_input_tokens": self.context_window - 1,
            "max_total_tokens": self.context_window,
        }
        return refusal or JSONResponse({"model_id": self.model_id, **_INFO, **limits})

    async def health(self, request: Request) -> Response:
        _, refusal, _ = await self._enter(request)
        if refusal is not None:
            return refusal
        if not self.healthy:
            return self.error(TGIError(503, "unhealthy", "healthcheck"))
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        _, refusal, _ = await self._enter(request)
        model = {"id": self.model_id, "object": "model", "created": 0, "owned_by": self.model_id}
        return refusal or JSONResponse({"object": "list", "data": [model]})

    async def tokenize(self, request: Request) -> Response:
        body, refusal, _ = await self._enter(request)
        if refusal is not None:
            return refusal
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            return self.missing("inputs")
        pieces = split_tokens(body["inputs"])
        ends = accumulate(len(piece) for piece in pieces)
        return JSONResponse(
            [
                {"id": token(p, 0)["id"], "text": p, "start": end - len(p), "stop": end}
                for p, end in zip(pieces, ends, strict=True)
            ]
        )
