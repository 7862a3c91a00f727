"""``GET /v1/models`` (the catalog's chat and embedding models) and ``POST /v1/embeddings``.

Embeddings come from the catalog's embedding models (in-process or remote), as documents
unless the request's extra ``input_type`` is ``query`` (e5-style models embed the two
differently). ``encoding_format: base64`` is little-endian float32, what the OpenAI SDK
asks for by default and decodes itself. Usage counts tokens with the gateway's estimate
(one per CJK character, word or punctuation mark): the local engines report none.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from fengchao_chains.catalog import Catalog
from fengchao_chains.embeddings import embeddings_for_card
from fengchao_chains.errors import FengchaoError
from fengchao_chains.llms._messages import estimate_tokens
from fengchao_chains.server.openai_v1_errors import (
    OpenAIError,
    authenticate,
    internal_error,
    invalid,
    model_not_found,
    openai_error,
    runtime_of,
)
from fengchao_chains.server.openai_v1_wire import EmbeddingsRequest, parse

router = APIRouter()

MAX_INPUTS = 2048
EMBEDDINGS_OWNER = "fengchao"


def model_list(catalog: Catalog) -> list[dict[str, Any]]:
    """Every enabled chat model, then every embedding model, as OpenAI's model objects."""
    created = {card.id: int(card.created.timestamp()) for card in catalog.values()}
    first = min(created.values(), default=0)
    chat = [_model(card.id, created[card.id], card.owned_by) for card in catalog.values()]
    embedding = [_model(card_id, first, EMBEDDINGS_OWNER) for card_id in catalog.embeddings]
    return chat + embedding


def _model(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


@router.get("/models", response_model=None)
async def list_models(request: Request) -> Response:
    try:
        await authenticate(request)
    except OpenAIError as exc:
        return exc.response()
    return JSONResponse({"object": "list", "data": model_list(runtime_of(request).catalog)})


@router.get("/models/{model_id:path}", response_model=None)
async def retrieve_model(model_id: str, request: Request) -> Response:
    try:
        await authenticate(request)
    except OpenAIError as exc:
        return exc.response()
    for model in model_list(runtime_of(request).catalog):
        if model["id"] == model_id:
            return JSONResponse(model)
    return model_not_found(model_id).response()


@router.post("/embeddings", response_model=None)
async def create_embeddings(request: Request) -> Response:
    """OpenAI's embeddings over a catalog embedding model."""
    try:
        await authenticate(request)
        body = parse(EmbeddingsRequest, await request.body())
        return JSONResponse(await _embed(runtime_of(request).catalog, body))
    except OpenAIError as exc:
        return exc.response()
    except FengchaoError as exc:
        return openai_error(exc).response()
    except Exception as exc:
        return internal_error(exc).response()


async def _embed(catalog: Catalog, body: EmbeddingsRequest) -> dict[str, Any]:
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
    embeddings = embeddings_for_card(card)
    if body.input_type == "query":
        vectors = [await embeddings.aembed_query(text) for text in texts]
    else:
        vectors = await embeddings.aembed_documents(texts)
    as_base64 = body.encoding_format == "base64"
    tokens = sum(estimate_tokens(text) for text in texts)
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
