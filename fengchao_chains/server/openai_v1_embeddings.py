"""``POST /v1/embeddings``: OpenAI's embeddings over the catalog's embedding models, metered
like every other model call.

Embeddings come from the catalog's embedding models (in-process or remote), as documents
unless the request's extra ``input_type`` is ``query`` (e5-style models embed the two
differently). ``encoding_format: base64`` is little-endian float32, what the OpenAI SDK
asks for by default and decodes itself.

Every call is one ``usage_events`` row (front door ``v1``, completion tokens 0, cost from
the card's ``in_price``): its input tokens are the vendor's own count where it reports one
(OpenAI-compatible servers do, per batch), else the recording estimator's, marked
``estimated`` (the in-process engines and TEI report none). A call that fails midway counts
what the vendor had answered. The answer's ``usage`` is the recorded figure. A key with
limits is admitted on the input's estimate (no completion allowance) and settled to the
recorded figure by the same :class:`~fengchao_chains.server.metering.Metering` as the other
doors. The vendor's counts come from :mod:`fengchao_chains.embeddings.usage`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from fengchao_chains.callbacks.token_estimate import estimate_tokens
from fengchao_chains.callbacks.usage import ABORTS, FrontDoor, Status, UsageRecord, UsageRecorder
from fengchao_chains.catalog import Catalog
from fengchao_chains.catalog.cards import EmbeddingCard
from fengchao_chains.embeddings import CatalogEmbeddings
from fengchao_chains.embeddings.usage import VendorBatch, collect_vendor_batches
from fengchao_chains.server.metering import Metering
from fengchao_chains.server.openai_v1_errors import (
    authenticate,
    error_answer,
    invalid,
    model_not_found,
    runtime_of,
)
from fengchao_chains.server.openai_v1_wire import EmbeddingsRequest, parse

router = APIRouter()

MAX_INPUTS = 2048
FRONT_DOOR: FrontDoor = "v1"


def billed_tokens(
    texts: Sequence[str], batches: Sequence[VendorBatch], *, finished: bool
) -> tuple[int, bool]:
    """A call's input tokens and whether they are an estimate: the vendor's count when it
    gave one for every batch it answered, else the estimate of the texts answered (all of
    them when the call finished; a failed call only the batches answered before it failed)."""
    reported = [batch.tokens for batch in batches if batch.tokens is not None]
    if batches and len(reported) == len(batches):
        return sum(reported), False
    answered = texts if finished else texts[: sum(batch.texts for batch in batches)]
    if not answered:
        return 0, False
    return sum(estimate_tokens(text) for text in answered), True


@dataclass
class EmbeddingCall:
    """One embeddings call being timed and counted, recorded once however it ends."""

    card: EmbeddingCard
    texts: list[str]
    recorder: UsageRecorder
    batches: list[VendorBatch] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    recorded: UsageRecord | None = None

    async def run(self, embeddings: CatalogEmbeddings, *, query: bool) -> list[list[float]]:
        """The vectors; the call's record is made before this returns or raises."""
        with collect_vendor_batches() as self.batches:
            try:
                if query:
                    vectors = [await embeddings.aembed_query(text) for text in self.texts]
                else:
                    vectors = await embeddings.aembed_documents(self.texts)
            except BaseException as exc:
                self.record(exc)
                raise
            self.record(None)
        return vectors

    def record(self, failure: BaseException | None) -> None:
        status: Status = "ok"
        if failure is not None:
            status = "aborted" if isinstance(failure, ABORTS) else "error"
        tokens, estimated = billed_tokens(self.texts, self.batches, finished=failure is None)
        self.recorded = self.recorder.record_embedding(
            self.card,
            started_at=self.started_at,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            tokens=tokens,
            estimated=estimated,
            status=status,
            error=None if failure is None else type(failure).__name__,
        )


@router.post("/embeddings", response_model=None)
async def create_embeddings(request: Request) -> Response:
    """OpenAI's embeddings over a catalog embedding model."""
    runtime = runtime_of(request)
    try:
        caller = await authenticate(request)
        body = parse(EmbeddingsRequest, await request.body())
        card = embedding_card(runtime.catalog, body)
        embeddings = runtime.embeddings_model(card)
        metering = Metering(runtime, caller.api_key, FRONT_DOOR, None)
        await metering.admit_texts(card, body.texts)
        call = EmbeddingCall(card, body.texts, metering.recorder)
        try:
            vectors = await call.run(embeddings, query=body.input_type == "query")
        finally:
            await metering.settle()
        return JSONResponse(_answer(card, vectors, call.recorded, body.encoding_format))
    except Exception as exc:
        return error_answer(exc)


def embedding_card(catalog: Catalog, body: EmbeddingsRequest) -> EmbeddingCard:
    """The request's embedding model, its input checked against it (404, 400)."""
    if body.model not in catalog.embeddings:
        detail = None
        if body.model in catalog:
            detail = f"`{body.model}` is a chat model; embedding models: " + ", ".join(
                catalog.embeddings
            )
        raise model_not_found(body.model, detail)
    card = catalog.embeddings[body.model]
    texts = body.texts
    if len(texts) > MAX_INPUTS:
        raise invalid(f"input: at most {MAX_INPUTS} texts per request", param="input")
    if any(not text for text in texts):
        raise invalid("input: texts must not be empty", param="input")
    if body.dimensions is not None and body.dimensions != card.dims:
        raise invalid(
            f"dimensions: `{card.id}` gives {card.dims}-dimensional vectors only",
            param="dimensions",
        )
    return card


def _answer(
    card: EmbeddingCard,
    vectors: list[list[float]],
    record: UsageRecord | None,
    encoding_format: str | None,
) -> dict[str, Any]:
    as_base64 = encoding_format == "base64"
    tokens = record.prompt_tokens if record else 0
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(v, as_base64=as_base64)}
            for i, v in enumerate(vectors)
        ],
        "model": card.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _encoded(vector: list[float], *, as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
