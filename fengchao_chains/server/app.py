"""The FastAPI application factory (a thin module: routers live beside it, by concern)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from fengchao_chains import __version__
from fengchao_chains.gateway.auth import install_auth_errors
from fengchao_chains.llms._http_clients import aclose_async_client
from fengchao_chains.runtime import Runtime
from fengchao_chains.server import (
    aigc,
    aigc_chat,
    auth_routes,
    housekeeping,
    langserve_routes,
    openai_v1,
    uploads,
    usage_routes,
)
from fengchao_chains.server.asgi import GatewayApp
from fengchao_chains.server.deps import RuntimeDep, app_runtime
from fengchao_chains.settings import Settings, get_settings


def create_app(
    runtime: Runtime | None = None,
    settings: Settings | None = None,
    *,
    freeze_heap: bool = False,
    access_log: bool = False,
) -> GatewayApp:
    """Build the app around a started ``runtime``, or start one from ``settings`` at start-up.

    Either way the app's lifespan owns shutdown: it closes the pools and releases the embedded
    database before the server process exits (also on SIGTERM and Ctrl-C).

    ``freeze_heap`` (for a server process, not for tests that build many apps) moves every
    object alive once start-up is done into the collector's permanent generation: they are
    never scanned again, so a full collection no longer walks the ~200,000 objects of the
    catalog, models and libraries, which stalled every request in flight for ~80 ms each
    time it ran under load (docs/benchmarks.md).

    ``access_log`` logs each request on ``fengchao_chains.access`` after its answer has left
    (for a server that turns uvicorn's own access log off, as ``fengchao serve`` does).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            current = runtime
        else:
            current = await asyncio.to_thread(Runtime.start, settings or get_settings())
        app.state.runtime = current
        workers = None
        try:
            await asyncio.to_thread(current.start_sample_news)
            await current.open_async()
            workers = await _start_task_workers(current)
            async with (
                current.keys.listening(),  # key lookups cached, revocations pushed by NOTIFY
                current.usage.flushing(current.settings.usage_flush_seconds),
                housekeeping.running(current),
            ):
                if freeze_heap:
                    gc.collect()
                    gc.freeze()
                with _reload_prompts_on_sighup(current):
                    yield
        finally:
            if workers is not None:  # unfinished tasks go back to the queue, never lost
                await workers.stop()
            await current.usage.aclose()  # the records of the last calls, workers' included
            await current.aclose()  # stops the sample news load first
            await aclose_async_client()  # the vendors' connections of this event loop

    app = GatewayApp(
        title="fengchao-chains",
        version=__version__,
        description="LLM gateway: the fengchao /aigc API over LangChain chat models.",
        lifespan=lifespan,
        access_log=access_log,
    )
    app.direct_route("/aigc/chat/", aigc_chat.chat)
    app.direct_route("/aigc/local_chat/", aigc_chat.local_chat)
    app.direct_route("/v1/chat/completions", openai_v1.chat_completions)
    # The chat routes first (for requests off the direct lane): a request is matched against
    # the routes in order, and the LangServe mount alone adds ~80.
    app.include_router(aigc_chat.router)
    app.include_router(openai_v1.router)
    app.include_router(aigc.router)
    app.include_router(uploads.router)
    app.include_router(auth_routes.router)
    app.include_router(usage_routes.router)
    langserve_routes.mount(app, app_runtime)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["ops"])
    install_auth_errors(app)  # the SDK's {"status", "msg"}; browsers go to /login
    return app


async def _start_task_workers(runtime: Runtime) -> Any:
    """The async-mode workers of this process (several processes may share the queue)."""
    from fengchao_chains.gateway.tasks import TaskWorkers

    async def handle(task: Any) -> dict[str, Any]:
        return await aigc_chat.run_task(runtime, task)

    workers = TaskWorkers(runtime.tasks, handle)
    await workers.start()
    return workers


@contextlib.contextmanager
def _reload_prompts_on_sighup(runtime: Runtime) -> Iterator[None]:
    """``kill -HUP <pid>`` re-reads the prompt files (off the event loop), the usual way to
    make a daemon pick up edited configuration; only possible in the main thread."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(
            signal.SIGHUP, lambda: loop.run_in_executor(None, runtime.reload_prompts)
        )
    except (RuntimeError, ValueError, NotImplementedError, AttributeError):
        yield  # not the main thread (an embedding app or a test server), or not Unix
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


async def healthz(runtime: RuntimeDep) -> dict[str, Any]:
    """Liveness plus a real database round trip."""
    async with runtime.database.async_pool.connection() as conn:
        await conn.execute("SELECT 1")
    return {"status": "ok", "version": __version__, "models": len(runtime.catalog)}
