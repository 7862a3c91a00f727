"""Usage reports over HTTP (``GET /aigc/usage``) and the usage page: being built (issue 8)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["usage"])
