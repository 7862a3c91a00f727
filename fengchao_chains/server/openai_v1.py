"""The OpenAI-compatible front door (``/v1``): being built (issue 8)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["openai"])
