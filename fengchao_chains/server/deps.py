"""FastAPI dependencies: the process runtime and what hangs off it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fengchao_chains.catalog import Catalog
from fengchao_chains.prompts import PromptLibrary
from fengchao_chains.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_catalog(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Catalog:
    return runtime.catalog


def get_prompts(runtime: Annotated[Runtime, Depends(get_runtime)]) -> PromptLibrary:
    return runtime.prompts


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PromptsDep = Annotated[PromptLibrary, Depends(get_prompts)]
