"""The original fengchao HTTP API (``/aigc/...``), as the published SDK calls it.

See ``docs/fengchao-sdk-protocol.md`` in the shared reference for the exact shapes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fengchao_chains.catalog import ModelCard
from fengchao_chains.prompts.library import CREATED_FORMAT
from fengchao_chains.retrievers import KnowledgeBaseRegistry
from fengchao_chains.server.deps import CatalogDep, PromptsDep, RuntimeDep

router = APIRouter(prefix="/aigc", tags=["aigc"])


def model_card_payload(card: ModelCard) -> dict[str, Any]:
    """One entry of ``GET /aigc/models/``: the SDK's ModelCard fields plus ``price`` (the
    single price of the first API version, kept equal to ``in_price``) and ``accepts_files``."""
    return {
        "id": card.id,
        "owned_by": card.owned_by,
        "max_input_token": card.max_input_token,
        "max_output_token": card.max_output_token,
        "in_price": card.in_price,
        "out_price": card.out_price,
        "price": card.in_price,
        "unit": card.unit,
        "mode": list(card.modes),
        "channel": card.channel,
        "accepts_files": card.accepts_files,
        "created": card.created.strftime(CREATED_FORMAT),
    }


@router.get("/models/")
async def list_models(catalog: CatalogDep) -> dict[str, Any]:
    """Every enabled catalog model; unauthenticated, as the SDK calls it without a token."""
    return {
        "status": 200,
        "msg": "执行成功",
        "data": [model_card_payload(card) for card in catalog.values()],
    }


@router.get("/prompts/")
async def list_prompts(prompts: PromptsDep) -> dict[str, Any]:
    """Every instruction as a prompt card; unauthenticated, like the model list."""
    return {"status": 200, "msg": "执行成功", "data": prompts.cards()}


@router.get("/kgs")
@router.get("/kgs/", include_in_schema=False)
async def list_knowledge_bases(runtime: RuntimeDep) -> dict[str, Any]:
    """Every knowledge base (the SDK's KGCard: id, desc, created); unauthenticated, and
    answered at ``/aigc/kgs`` exactly, the path the SDK calls (no trailing slash)."""
    knowledge_bases = await KnowledgeBaseRegistry(runtime.database).aall()
    return {
        "status": 200,
        "msg": "执行成功",
        "data": [
            {"id": kb.id, "desc": kb.description, "created": kb.created_at.strftime(CREATED_FORMAT)}
            for kb in knowledge_bases
        ],
    }
