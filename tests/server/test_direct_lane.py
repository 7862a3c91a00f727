"""The app's direct lane for the chat routes, and its own access log
(``fengchao_chains/server/asgi.py``)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from fengchao_chains.server.asgi import GatewayApp
from fengchao_chains.settings import Settings
from fengchao_chains.testing.serve import serve_in_thread
from tests.server.conftest import Server, sdk_body

CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}


async def _only_direct(request: Request) -> Response:
    return PlainTextResponse(f"direct: {(await request.body()).decode()}")


def test_a_direct_route_is_answered_without_the_router() -> None:
    app = GatewayApp()  # no route at all: the router would answer 404
    app.direct_route("/only-direct", _only_direct)
    with TestClient(app) as client:
        assert client.post("/only-direct", content=b"hi").text == "direct: hi"
        assert client.get("/only-direct").status_code == 404  # POST only
        assert client.post("/only-direct/").status_code == 404  # that path only


def test_any_middleware_turns_the_lane_off() -> None:
    """Middleware must see every request, so with any the requests go the usual way."""
    app = GatewayApp()
    app.direct_route("/only-direct", _only_direct)
    app.add_middleware(GZipMiddleware)
    with TestClient(app) as client:
        assert client.post("/only-direct", content=b"hi").status_code == 404


def test_the_chat_routes_take_the_lane(server: Server) -> None:
    app = server.client.app
    assert isinstance(app, GatewayApp)
    assert app.direct_paths == {"/v1/chat/completions", "/aigc/chat/", "/aigc/local_chat/"}
    bearer = {"Authorization": f"Bearer {server.token}"}
    answer = server.client.post("/v1/chat/completions", json=CHAT, headers=bearer)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Echo: hi"


def test_answers_on_the_lane_are_those_of_the_usual_path(server: Server) -> None:
    """The same failures (through the app's exception handlers) and the same answers."""
    app = server.client.app
    assert isinstance(app, GatewayApp)
    bearer = {"Authorization": f"Bearer {server.token}"}
    cases = [
        ("/aigc/chat/", sdk_body(), {}),
        ("/v1/chat/completions", CHAT, {}),
        ("/v1/chat/completions", {"model": "nope", "messages": []}, bearer),
        ("/aigc/chat/", sdk_body(query=""), {"Authorization": server.token}),
    ]
    direct = [server.client.post(path, json=body, headers=h) for path, body, h in cases]
    app.user_middleware.append(Middleware(GZipMiddleware, minimum_size=10**9))  # lane off
    app.middleware_stack = None
    try:
        usual = [server.client.post(path, json=body, headers=h) for path, body, h in cases]
    finally:
        app.user_middleware.pop()
        app.middleware_stack = None
    assert [a.status_code for a in direct] == [b.status_code for b in usual] == [401, 401, 400, 443]
    assert [a.json() for a in direct] == [b.json() for b in usual]


def test_an_unexpected_error_is_a_plain_500_and_reaches_the_server() -> None:
    app = GatewayApp()

    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    app.direct_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/broken")
    assert answer.status_code == 500 and answer.text == "Internal Server Error"
    with TestClient(app) as client, pytest.raises(RuntimeError, match="boom"):
        client.post("/broken")  # re-raised: uvicorn logs it with its traceback


def test_the_access_log_is_the_apps_own_and_masks_the_secret(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """``fengchao serve``'s set-up: uvicorn's access log off, the app's on."""
    from fengchao_chains.server import create_app

    caplog.set_level(logging.INFO)
    app = create_app(settings=settings, access_log=True)
    served = serve_in_thread(  # uvicorn's access log off, as in fengchao serve
        app, lifespan="on", start_seconds=60, log_config=None, log_level="info", access_log=False
    )
    with served as base_url, httpx.Client(base_url=base_url) as client:
        key = app.state.runtime.keys.create("log")
        query = {"api_key": key.api_key, "secret_key": key.secret_key}
        assert client.get("/aigc/token", params=query).status_code == 200
        assert client.post("/aigc/chat/", json=sdk_body()).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "fengchao_chains.access"]
    assert not [r for r in caplog.records if r.name == "uvicorn.access"]
    token_line = next(line for line in lines if "/aigc/token" in line)
    assert "secret_key=***" in token_line and key.secret_key not in token_line
    assert re.search(
        r'"GET /aigc/token\?api_key=fc-\w+&secret_key=\*\*\* HTTP/1.1" 200 [\d.]+ms$', token_line
    )
    assert any(re.search(r'"POST /aigc/chat/ HTTP/1.1" 401 [\d.]+ms$', line) for line in lines)


def test_every_request_is_in_the_access_log_once(caplog: pytest.LogCaptureFixture) -> None:
    """Also one that failed, and one whose answer broke off after it began."""
    caplog.set_level(logging.INFO, logger="fengchao_chains.access")
    app = GatewayApp(access_log=True)

    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    async def cut(request: Request) -> Response:
        async def body() -> AsyncIterator[str]:
            yield "part"
            raise RuntimeError("cut")

        return StreamingResponse(body())

    app.direct_route("/broken", broken)
    app.direct_route("/cut", cut)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.post("/broken")
        assert client.post("/cut").text == "part"  # broken off after its first part
        client.get("/missing")
    lines = [r.getMessage() for r in caplog.records if r.name == "fengchao_chains.access"]
    assert len(lines) == 3
    for wanted in (
        '"POST /broken HTTP/1.1" 500',
        '"POST /cut HTTP/1.1" 200',
        '"GET /missing HTTP/1.1" 404',
    ):
        assert sum(wanted in line for line in lines) == 1, (wanted, lines)
