"""``GET /v1/models`` and ``GET /v1/models/{id}``: the catalog's enabled chat models, then
its embedding models (``POST /v1/embeddings`` is :mod:`.openai_v1_embeddings`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from fengchao_chains.catalog import Catalog
from fengchao_chains.server.openai_v1_errors import (
    authenticate,
    error_answer,
    model_not_found,
    runtime_of,
)

router = APIRouter()

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
    except Exception as exc:
        return error_answer(exc)
    return JSONResponse({"object": "list", "data": model_list(runtime_of(request).catalog)})


@router.get("/models/{model_id:path}", response_model=None)
async def retrieve_model(model_id: str, request: Request) -> Response:
    try:
        await authenticate(request)
    except Exception as exc:
        return error_answer(exc)
    for model in model_list(runtime_of(request).catalog):
        if model["id"] == model_id:
            return JSONResponse(model)
    return model_not_found(model_id).response()
