"""The app in-process, started by its own lifespan (the `uvicorn server:app` path)."""

from __future__ import annotations

import inspect

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from fengchao_chains.errors import ConfigurationError
from fengchao_chains.runtime import Runtime
from fengchao_chains.server import (
    aigc,
    aigc_chat,
    create_app,
    openai_v1,
    openai_v1_embeddings,
    openai_v1_models,
)
from fengchao_chains.settings import Settings


def test_lifespan_starts_and_closes_the_runtime(settings: Settings) -> None:
    app = create_app(settings=settings)
    with TestClient(app) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        models = client.get("/aigc/models/").json()["data"]
        assert len(models) == health.json()["models"]
        runtime = app.state.runtime
    # After shutdown the pools are closed.
    assert runtime.database._pool is None
    assert runtime.database._async_pool is None


def test_catalog_override_reaches_the_api(settings: Settings, tmp_path) -> None:
    override = tmp_path / "prices.toml"
    override.write_text(
        '[models."glm-4"]\nin_price = 0.05\n\n[models."BLOOMZ-7B"]\nenabled = false\n'
    )
    app = create_app(settings=settings.model_copy(update={"catalog_files": [override]}))
    with TestClient(app) as client:
        data = {m["id"]: m for m in client.get("/aigc/models/").json()["data"]}
    assert data["glm-4"]["in_price"] == 0.05
    assert data["glm-4"]["price"] == 0.05
    assert "BLOOMZ-7B" not in data


def test_unknown_default_model_fails_start_with_suggestions(settings: Settings) -> None:
    bad = settings.model_copy(update={"default_model": "glm4"})
    with pytest.raises(ConfigurationError, match=r"^FENGCHAO_DEFAULT_MODEL: unknown model 'glm4'"):
        Runtime.start(bad)


def test_prompt_cards_are_served_without_auth(settings: Settings) -> None:
    with TestClient(create_app(settings=settings)) as client:
        response = client.get("/aigc/prompts/")
    assert response.status_code == 200
    payload = response.json()
    assert payload["status"] == 200
    assert len(payload["data"]) == 22
    assert payload["data"][0]["id"] == "默认"
    assert {"id", "prefix", "prompt", "system", "created"} <= set(payload["data"][0])


def test_the_chat_routes_run_no_work_in_a_worker_thread() -> None:
    """FastAPI runs a plain ``def`` endpoint or dependency in its thread pool: a thread hop
    on every request (measured: ~0.35 ms of an /aigc answer's latency). The chat and
    embeddings routes, the lists the SDK and OpenAI clients fetch, and everything they
    depend on must be ``async def``."""
    routers = (
        aigc.router,
        aigc_chat.router,
        openai_v1.router,
        openai_v1_embeddings.router,
        openai_v1_models.router,
    )
    routes = [route for router in routers for route in router.routes if isinstance(route, APIRoute)]
    found: dict[str, list[str]] = {}
    for route in routes:
        sync = []
        pending = [route.dependant]
        while pending:
            dependant = pending.pop()
            call = dependant.call
            if call is not None and not inspect.iscoroutinefunction(call):
                sync.append(getattr(call, "__qualname__", repr(call)))
            pending.extend(dependant.dependencies)
        found[route.path] = sync
    assert found == {path: [] for path in found}
    assert {"/aigc/chat/", "/aigc/models/", "/aigc/prompts/", "/v1/chat/completions"} <= set(found)


@pytest.mark.parametrize("on", [True, False])
def test_the_gateway_coalesces_its_vendor_streams_unless_told_not_to(
    settings: Settings, on: bool
) -> None:
    runtime = Runtime.start(settings.model_copy(update={"stream_coalescing": on}))
    try:
        model = runtime.chat_model("gpt-3.5-turbo")
        assert model.coalesce_stream_text is on  # type: ignore[attr-defined]
        assert runtime.chat_model("gpt-3.5-turbo") is model
    finally:
        runtime.close()
