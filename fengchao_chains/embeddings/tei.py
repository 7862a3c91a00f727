"""Embeddings from a Hugging Face text-embeddings-inference (TEI) server, through
huggingface_hub's ``InferenceClient.feature_extraction`` (TEI's maintained client), natively
sync and async.

A batch is one request (TEI's embed route takes a list of ``inputs``), sent with
``normalize`` and ``truncate`` so vectors are unit length and an over-long text is cut by
the server instead of refused. TEI itself adds no instruction prefix, so a model trained
with them (e5: ``query: `` / ``passage: ``) gets them from the card's ``query_prefix`` and
``document_prefix``.

Errors are mapped as TGI's are (same client, same ``{"error", "error_type"}`` bodies;
``llms/_hf_errors.py``): TEI's own error types are first renamed to TGI's, and retries are
the shared HTTP layer's (429 and 5xx, honouring ``Retry-After``).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import AsyncInferenceClient, InferenceClient
from pydantic import Field, PrivateAttr, SecretStr

from fengchao_chains.embeddings._base import CatalogEmbeddings
from fengchao_chains.llms import _retries
from fengchao_chains.llms._hf_errors import HuggingFaceErrors
from fengchao_chains.llms.errors import UpstreamError

VENDOR = "tei"
_TGI_ERROR_TYPES = {
    "validation": "validation",  # 413: batch too large, input too long (truncate=false)
    "tokenizer": "validation",  # 422
    "empty": "validation",  # 400
    "overloaded": "overloaded",  # 429
    "backend": "generation",  # 424: the model failed
    "unhealthy": "generation",  # 503
}
"""TEI's ``error_type`` (spelled ``Validation``, ``Backend``, ...) -> TGI's name for it."""


class TEIEmbeddings(CatalogEmbeddings):
    """Embeddings served by text-embeddings-inference at ``base_url``."""

    base_url: str = Field(min_length=1)
    """The server's root URL (TEI embeds on ``POST /``, as ``/embed``)."""
    api_key: SecretStr | None = None
    """Sent as ``Authorization: Bearer`` (TEI started with ``--api-key``, or a proxy)."""
    timeout: float | None = Field(default=60.0, alias="request_timeout")
    """Seconds to wait for each request; ``None`` waits forever."""
    max_retries: int = 2
    """Retries after the first attempt, on 429, 5xx and connection errors."""
    normalize: bool = True
    truncate: bool = True
    query_prefix: str = ""
    document_prefix: str = ""

    _errors: HuggingFaceErrors = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._errors = HuggingFaceErrors(VENDOR, self.timeout, rename=_TGI_ERROR_TYPES)

    def _forget_credentials(self) -> None:
        """Nothing to forget: the key is static (part of the shared retry protocol)."""

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url.rstrip("/"),
            "api_key": self.api_key.get_secret_value() if self.api_key else None,
            "timeout": self.timeout,
            "provider": "hf-inference",  # a server of our own, never the Hub's routing
        }

    def _options(self) -> dict[str, bool]:
        return {"normalize": self.normalize, "truncate": self.truncate}

    def _inputs(self, texts: list[str], *, query: bool) -> list[str]:
        prefix = self.query_prefix if query else self.document_prefix
        return [prefix + text for text in texts] if prefix else texts

    def _answer(self, vectors: Any, sent: int) -> list[list[float]]:
        if len(vectors) != sent:
            raise UpstreamError(f"answered {len(vectors)} vectors for {sent} inputs", vendor=VENDOR)
        return self._checked(vectors)

    # ------------------------------------------------------------------ sync

    def _embed(self, texts: list[str], *, query: bool) -> list[list[float]]:
        if not texts:
            return []
        vectors: list[list[float]] = []
        with InferenceClient(**self._client_kwargs()) as client:
            for batch in self._batches(self._inputs(texts, query=query)):

                def attempt(batch: list[str] = batch) -> Any:
                    with self._errors.mapped():
                        return client.feature_extraction(batch, **self._options())

                vectors.extend(self._answer(_retries.with_retries(self, attempt), len(batch)))
        return vectors

    # ------------------------------------------------------------------ async

    async def _aembed(self, texts: list[str], *, query: bool) -> list[list[float]]:
        if not texts:
            return []
        vectors: list[list[float]] = []
        async with AsyncInferenceClient(**self._client_kwargs()) as client:
            for batch in self._batches(self._inputs(texts, query=query)):

                async def attempt(batch: list[str] = batch) -> Any:
                    with self._errors.mapped():
                        return await client.feature_extraction(batch, **self._options())

                answer = await _retries.awith_retries(self, attempt)
                vectors.extend(self._answer(answer, len(batch)))
        return vectors
