"""Local models served by Hugging Face text-generation-inference (TGI): the seed's Qwen1.5
chat models, or any model a TGI server holds.

The client is huggingface_hub's ``InferenceClient`` / ``AsyncInferenceClient``, TGI's
maintained client (the old ``text-generation`` package pins huggingface-hub below 1.0).

- **Two routes.** The Messages API (``/v1/chat/completions``) applies the model's chat
  template on the server and reports usage, also at the end of a stream. Servers without it
  (TGI before 1.4, or started without a chat template) get ``/generate_stream`` with the
  conversation rendered through ``chat_template`` (Qwen's ChatML by default) and usage from
  the final event's ``details`` (``input_length``, ``generated_tokens``). ``api="auto"``
  tries the Messages API and, when the server answers 404 and ``/info`` says it is TGI,
  switches this model object to ``/generate_stream`` for good.
- **One client per call.** An ``InferenceClient`` keeps every stream it opened until closed,
  so each call opens one and closes it when the answer ends (or the caller stops reading),
  which also releases the connection of an abandoned stream.
- **Errors.** TGI's ``{"error", "error_type"}`` bodies and stream events become the project's
  exception tree (``validation`` → invalid request or context too long, ``overloaded`` → rate
  limit, ``generation`` / ``incomplete_generation`` → upstream); rate limits, 5xx and broken
  connections are retried while the answer has not started, as for every vendor.
- ``server_info()`` / ``is_healthy()`` read ``/info`` and ``/health``: which model the
  server holds, its limits and version.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from huggingface_hub import AsyncInferenceClient, InferenceClient
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, PrivateAttr, SecretStr, field_validator

from fengchao_chains.catalog.cards import ModelCard
from fengchao_chains.llms import _retries
from fengchao_chains.llms._base import RemoteChatModel, result, usage
from fengchao_chains.llms._chat_template import (
    QWEN_CHATML,
    ChatTemplateError,
    load_chat_template,
    render_chat_template,
)
from fengchao_chains.llms._factory import card_kwargs
from fengchao_chains.llms._hf_errors import HuggingFaceErrors
from fengchao_chains.llms._messages import openai_messages
from fengchao_chains.llms._tgi_stream import FINISH_REASONS, StreamDecoder, before_stop
from fengchao_chains.llms.errors import (
    InvalidRequestError,
    VendorError,
)
from fengchao_chains.settings import Settings

DEFAULT_BASE_URL = "http://127.0.0.1:8080"

_CHAT_PARAMS = set(inspect.signature(InferenceClient.chat_completion).parameters) - {
    "self",
    "messages",
    "stream",
    "extra_body",
}
_GENERATE_PARAMS = set(inspect.signature(InferenceClient.text_generation).parameters) - {
    "self",
    "prompt",
    "stream",
    "details",
    "model",
}

Route = Literal["messages", "generate"]


class ChatTGI(RemoteChatModel):
    """A chat model on a text-generation-inference server (or any server with its Messages
    API: vLLM, llama.cpp's server)."""

    vendor_name = "tgi"
    default_base_url = DEFAULT_BASE_URL

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("HF_TOKEN", default=None), alias="hf_token"
    )
    """Sent as ``Authorization: Bearer`` (default ``HF_TOKEN``): TGI ignores it, an
    inference endpoint or a proxy in front of it may need it."""
    base_url: str | None = Field(default_factory=from_env("TGI_BASE_URL", default=None))
    """The server's root URL (default ``TGI_BASE_URL``, else ``http://127.0.0.1:8080``)."""
    api: Literal["auto", "messages", "generate"] = "auto"
    """Which route to use: the Messages API, ``/generate_stream``, or the first that works."""
    chat_template: str = QWEN_CHATML
    """For the ``/generate`` route: Jinja text, a ``.jinja`` file or a tokenizer_config.json
    (a file is read once, when the model is made)."""
    stream_usage: bool = True
    """Ask for the usage chunk at the end of a Messages API stream."""

    @field_validator("chat_template")
    @classmethod
    def _read_chat_template(cls, value: str) -> str:
        return load_chat_template(value)

    _route: Route | None = PrivateAttr(default=None)
    _served_model: str | None = PrivateAttr(default=None)

    # ------------------------------------------------------------------ the server

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self._url(""),
            "api_key": self._secret(self.api_key) or None,
            "timeout": self.timeout,
            "provider": "hf-inference",  # a server of our own, never the Hub's routing
        }

    def _client(self) -> InferenceClient:
        return InferenceClient(**self._client_kwargs())

    def _aclient(self) -> AsyncInferenceClient:
        return AsyncInferenceClient(**self._client_kwargs())

    def server_info(self) -> dict[str, Any]:
        """TGI's ``/info``: ``model_id``, ``version``, ``max_input_tokens``, ..."""
        with self._client() as client, self._mapped():
            info: dict[str, Any] = client.get_endpoint_info()
        return info

    async def aserver_info(self) -> dict[str, Any]:
        async with self._aclient() as client:
            with self._mapped():
                info: dict[str, Any] = await client.get_endpoint_info()
        return info

    def is_healthy(self) -> bool:
        """Whether ``/health`` answers 200 (the model is loaded and can generate)."""
        with self._client() as client, self._mapped():
            healthy: bool = client.health_check()
        return healthy

    async def ais_healthy(self) -> bool:
        async with self._aclient() as client:
            with self._mapped():
                healthy: bool = await client.health_check()
        return healthy

    # ------------------------------------------------------------------ requests

    def _chat_kwargs(self, params: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        kwargs = {"model": self.model, **{k: v for k, v in params.items() if k in _CHAT_PARAMS}}
        extra = {k: v for k, v in params.items() if k not in _CHAT_PARAMS}
        if extra:
            kwargs["extra_body"] = extra
        if stream and self.stream_usage:
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    def _generate_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        """``/generate`` parameters: TGI's names, and greedy decoding for temperature 0
        (TGI refuses a temperature that is not strictly positive)."""
        params = dict(params)
        params.pop("model", None)
        if "max_tokens" in params:
            params["max_new_tokens"] = params.pop("max_tokens")
        temperature = params.get("temperature")
        if temperature is not None and temperature <= 0:
            del params["temperature"]
            params["do_sample"] = False
        if params.get("top_p") is not None and params["top_p"] >= 1:
            del params["top_p"]  # TGI wants 0 < top_p < 1; 1 means no nucleus sampling
        unknown = sorted(set(params) - _GENERATE_PARAMS)
        if unknown:
            raise InvalidRequestError(
                f"TGI's /generate takes no parameter {', '.join(unknown)}", vendor=self.vendor_name
            )
        return params

    def _prompt(self, messages: list[BaseMessage]) -> str:
        try:
            return render_chat_template(
                self.chat_template, openai_messages(messages, self.vendor_name)
            )
        except ChatTemplateError as exc:
            raise InvalidRequestError(str(exc), vendor=self.vendor_name) from None

    # ------------------------------------------------------------------ errors

    def _mapped(self) -> contextlib.AbstractContextManager[None]:
        """Raise huggingface_hub's and the transport's errors as the project's."""
        return HuggingFaceErrors(self.vendor_name, self.timeout).mapped()

    # ------------------------------------------------------------------ routes

    def _decoder(
        self, messages: list[BaseMessage], params: dict[str, Any], prompt: str | None
    ) -> StreamDecoder:
        """A stream's decoder, once the route is known. It names the call's model when the
        server does not, else the one ``/info`` reported (after a fallback), else this
        object's."""
        model_name = str(params.get("model") or self._served_model or self.model)
        return StreamDecoder(
            messages, params, vendor=self.vendor_name, model_name=model_name, prompt=prompt
        )

    def _use_generate(self) -> bool:
        return self.api == "generate" or self._route == "generate"

    def _fall_back(self, exc: VendorError) -> bool:
        """Whether a Messages API error means "this TGI has no Messages API" (a 404 while
        ``/info`` answers); if so this model uses ``/generate_stream`` from now on."""
        if not self._may_fall_back(exc):
            return False
        with contextlib.suppress(VendorError):
            self._switch(self.server_info())
            return True
        return False

    async def _afall_back(self, exc: VendorError) -> bool:
        if not self._may_fall_back(exc):
            return False
        with contextlib.suppress(VendorError):
            self._switch(await self.aserver_info())
            return True
        return False

    def _may_fall_back(self, exc: VendorError) -> bool:
        return self.api == "auto" and exc.status_code == 404

    def _switch(self, info: dict[str, Any]) -> None:
        self._route = "generate"
        self._served_model = info.get("model_id")

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not self._use_generate():
            params = self._params(stop, **kwargs)
            try:
                with self._client() as client:
                    return _retries.with_retries(
                        self, lambda: self._chat_once(client, messages, params)
                    )
            except VendorError as exc:
                if not self._fall_back(exc):
                    raise
        # /generate reports no prompt length; the stream's last event does.
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not self._use_generate():
            params = self._params(stop, **kwargs)
            try:
                async with self._aclient() as client:
                    return await _retries.awith_retries(
                        self, lambda: self._achat_once(client, messages, params)
                    )
            except VendorError as exc:
                if not await self._afall_back(exc):
                    raise
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    def _chat_once(
        self, client: InferenceClient, messages: list[BaseMessage], params: dict[str, Any]
    ) -> ChatResult:
        with self._mapped():
            output = client.chat_completion(
                openai_messages(messages, self.vendor_name),
                stream=False,
                **self._chat_kwargs(params, stream=False),
            )
        return self._chat_result(output, params)

    async def _achat_once(
        self, client: AsyncInferenceClient, messages: list[BaseMessage], params: dict[str, Any]
    ) -> ChatResult:
        with self._mapped():
            output = await client.chat_completion(
                openai_messages(messages, self.vendor_name),
                stream=False,
                **self._chat_kwargs(params, stream=False),
            )
        return self._chat_result(output, params)

    def _chat_result(self, output: Any, params: dict[str, Any]) -> ChatResult:
        choice = output.choices[0]
        raw = output.usage
        reason = choice.finish_reason
        return result(
            before_stop(choice.message.content or "", params.get("stop") or []),
            usage_metadata=usage(raw.prompt_tokens, raw.completion_tokens) if raw else None,
            metadata={
                "finish_reason": FINISH_REASONS.get(reason, reason),
                "model_name": output.model or params.get("model") or self.model,
                "system_fingerprint": output.system_fingerprint or None,
            },
            message_id=output.id or None,
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        params = self._params(stop, **kwargs)
        with self._client() as client:
            events: Iterator[Any] | None = None
            prompt: str | None = None
            if not self._use_generate():
                try:
                    events = _retries.with_retries(
                        self, lambda: self._open_chat(client, messages, params)
                    )
                except VendorError as exc:
                    if not self._fall_back(exc):
                        raise
            if events is None:
                prompt = text = self._prompt(messages)
                options = self._generate_kwargs(params)
                events = _retries.with_retries(
                    self, lambda: self._open_generate(client, text, options)
                )
            decoder = self._decoder(messages, params, prompt)
            with self._mapped():
                for chunk in decoder.run(events):
                    if run_manager and chunk.text:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        params = self._params(stop, **kwargs)
        async with self._aclient() as client:
            events: AsyncIterator[Any] | None = None
            prompt: str | None = None
            if not self._use_generate():
                try:
                    events = await _retries.awith_retries(
                        self, lambda: self._aopen_chat(client, messages, params)
                    )
                except VendorError as exc:
                    if not await self._afall_back(exc):
                        raise
            if events is None:
                prompt = text = self._prompt(messages)
                options = self._generate_kwargs(params)
                events = await _retries.awith_retries(
                    self, lambda: self._aopen_generate(client, text, options)
                )
            decoder = self._decoder(messages, params, prompt)
            with self._mapped():
                async for chunk in decoder.arun(events):
                    if run_manager and chunk.text:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk

    def _open_chat(
        self, client: InferenceClient, messages: list[BaseMessage], params: dict[str, Any]
    ) -> Iterator[Any]:
        with self._mapped():
            return iter(
                client.chat_completion(
                    openai_messages(messages, self.vendor_name),
                    stream=True,
                    **self._chat_kwargs(params, stream=True),
                )
            )

    async def _aopen_chat(
        self, client: AsyncInferenceClient, messages: list[BaseMessage], params: dict[str, Any]
    ) -> AsyncIterator[Any]:
        with self._mapped():
            events = await client.chat_completion(
                openai_messages(messages, self.vendor_name),
                stream=True,
                **self._chat_kwargs(params, stream=True),
            )
        return aiter(events)

    def _open_generate(
        self, client: InferenceClient, prompt: str, options: dict[str, Any]
    ) -> Iterator[Any]:
        with self._mapped():
            return iter(client.text_generation(prompt, details=True, stream=True, **options))

    async def _aopen_generate(
        self, client: AsyncInferenceClient, prompt: str, options: dict[str, Any]
    ) -> AsyncIterator[Any]:
        with self._mapped():
            events = await client.text_generation(prompt, details=True, stream=True, **options)
        return aiter(events)


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatTGI:
    """Catalog factory for vendor ``tgi``: the card's ``base_url``, else ``TGI_BASE_URL``."""
    kwargs = card_kwargs(
        card,
        base_url=settings.tgi_base_url or DEFAULT_BASE_URL,
        credentials={"api_key": settings.hf_token},
        overrides=overrides,
    )
    return ChatTGI(**kwargs)
