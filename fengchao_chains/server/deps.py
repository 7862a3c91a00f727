"""FastAPI dependencies: the process runtime and what hangs off it.

They are ``async def`` although they never wait: FastAPI runs a plain ``def`` dependency in
its worker-thread pool, a thread hop (two context switches and a queue) on every request
that uses it, which py-spy of ``/aigc/chat/`` under load showed as about 5% of the server's
time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fengchao_chains.catalog import Catalog
from fengchao_chains.prompts import PromptLibrary
from fengchao_chains.runtime import Runtime


def app_runtime(request: Request) -> Runtime:
    """The started runtime of the request's app (plain function, for non-FastAPI callers)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    return app_runtime(request)


async def get_catalog(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Catalog:
    return runtime.catalog


async def get_prompts(runtime: Annotated[Runtime, Depends(get_runtime)]) -> PromptLibrary:
    return runtime.prompts


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PromptsDep = Annotated[PromptLibrary, Depends(get_prompts)]
