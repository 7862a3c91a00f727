"""/aigc runs the chat steps as plain calls: one LangChain run per request (the chat model's,
which the usage recorder counts), the same guard and conversation memory as the LangServe
chain, and a client that leaves a stream halfway ends the upstream call at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
import pytest
from langchain_core.messages import BaseMessage
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from fengchao_chains.callbacks import UsageRecorder
from fengchao_chains.callbacks.usage import FrontDoor
from fengchao_chains.gateway.auth import issue_token
from fengchao_chains.gateway.sensitive import SensitiveContentError
from fengchao_chains.gateway.usage import UsageLog
from fengchao_chains.llms import answer_first
from fengchao_chains.runtime import Runtime
from fengchao_chains.server import aigc_chat, create_app
from fengchao_chains.settings import Settings
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.serve import serve_in_thread
from tests.server.conftest import ONLINE, Server, sdk_body

WORD = "赌博网站"  # in the packaged sensitive-word list


class RunCountingRecorder(UsageRecorder):
    """The usage recorder, also noting every LangChain run it is told of."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chain_runs: list[str] = []
        self.model_runs: list[UUID] = []

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, **kwargs: Any) -> None:
        self.chain_runs.append(str(kwargs.get("name") or (serialized or {}).get("name")))

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.model_runs.append(run_id)
        super().on_chat_model_start(
            serialized, messages, run_id=run_id, metadata=metadata, **kwargs
        )


@pytest.fixture
def recorders(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[RunCountingRecorder]:
    """Every request's recorder, made where the server makes them (its usage log)."""
    made: list[RunCountingRecorder] = []
    usage: UsageLog = server.runtime.usage

    def recorder(
        caller: str, front_door: FrontDoor, request_id: str | None = None
    ) -> UsageRecorder:
        made.append(
            RunCountingRecorder(
                caller, usage.catalog, front_door=front_door, sink=usage, request_id=request_id
            )
        )
        return made[-1]

    monkeypatch.setattr(usage, "recorder", recorder)
    return made


def _only(recorders: list[RunCountingRecorder]) -> RunCountingRecorder:
    assert len(recorders) == 1, recorders
    recorder = recorders.pop()
    assert recorder.chain_runs == []  # no route, messages, guard or memory runs
    assert len(recorder.model_runs) == 1
    ((record),) = recorder.records  # and the call is recorded once, priced by catalog id
    assert record.run_id == recorder.model_runs[0] and record.model == ONLINE
    assert record.prompt_tokens > 0 and record.completion_tokens > 0 and record.cost > 0
    return recorder


def test_invoke_stream_and_async_make_one_langchain_run_the_models(
    server: Server, recorders: list[RunCountingRecorder]
) -> None:
    # the guard (is_sensitive) and the conversation memory (request_id) are both on
    answer = server.chat(query="介绍一下北京", request_id="conv-flat").json()
    assert answer["status"] == 200
    recorder = _only(recorders)
    assert recorder.records[0].status == "ok" and not recorder.records[0].streamed
    assert answer["usage"]["total_tokens"] == recorder.records[0].total_tokens

    chunks = server.stream(query="再介绍一下上海", request_id="conv-flat")
    assert chunks[-1]["status"] == 200 and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    recorder = _only(recorders)
    assert recorder.records[0].streamed
    assert chunks[-1]["usage"]["total_tokens"] == recorder.records[0].total_tokens

    submitted = server.chat(query="异步问题", mode="async").json()
    task_id = submitted["choices"][0]["message"]["content"]
    deadline = time.monotonic() + 30  # the worker may have run it already, or not yet
    while not any(r.records for r in recorders) and time.monotonic() < deadline:
        time.sleep(0.05)
    submission = recorders.pop(0)  # made before the worker's; it calls no model
    assert submission.front_door == "aigc" and not submission.records
    assert not submission.chain_runs and not submission.model_runs
    _only(recorders)
    result = server.chat(mode="async_result", task_id=task_id, query=None).json()
    assert result["status"] == 200

    # both turns went into the conversation: the memory step ran, as plain code
    api_key = next(k.api_key for k in server.runtime.keys.list() if k.name == "first")
    stored = server.runtime.conversations.history(api_key, "conv-flat").get_messages()
    assert [m.type for m in stored] == ["human", "ai", "human", "ai"]
    assert stored[1].text == answer["choices"][0]["message"]["content"]
    assert stored[3].text == "".join(c["choices"][0]["message"]["content"] for c in chunks)


def test_the_guard_masks_and_refuses_as_the_langserve_chain_does(server: Server) -> None:
    server.openai.reply = lambda text: f"first words then {WORD} and more text"
    masked = "first words then " + "*" * len(WORD) + " and more text"
    invoked = server.chat(query="推荐", sensitive_replace=True).json()
    streamed = server.stream(query="推荐", sensitive_replace=True)
    chain = server.client.post(
        "/chat/invoke",
        json={"input": {"model": ONLINE, "query": "推荐", "sensitive_replace": True}},
        headers=server.headers(),
    ).json()
    assert invoked["choices"][0]["message"]["content"] == masked
    assert "".join(c["choices"][0]["message"]["content"] for c in streamed) == masked
    assert chain["output"]["content"] == masked  # /chat outputs the answer message

    assert server.chat(query="推荐").json()["status"] == 6601
    assert server.stream(query="推荐")[-1]["status"] == 6601
    with pytest.raises(SensitiveContentError):  # the chain raises it (the in-process client
        server.client.post(  # re-raises the server's exceptions)
            "/chat/invoke",
            json={"input": {"model": ONLINE, "query": "推荐"}},
            headers=server.headers(),
        )


# --- a client leaving a stream --------------------------------------------------------------


@dataclass
class OpenCalls:
    """The fake upstream's app, counting the requests it is still serving."""

    app: ASGIApp
    open: int = 0
    ended: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self._lock:
            self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.open -= 1
                self.ended.append(time.monotonic())


@pytest.fixture
def upstream() -> Iterator[tuple[FakeOpenAI, OpenCalls, str]]:
    fake = FakeOpenAI()
    calls = OpenCalls(fake.app)
    with serve_in_thread(calls) as url:
        yield fake, calls, url


@dataclass
class Gateway:
    url: str
    runtime: Runtime
    token: str


@pytest.fixture
def gateway(settings: Settings, upstream: tuple[FakeOpenAI, OpenCalls, str]) -> Iterator[Gateway]:
    """The app served by uvicorn on loopback with its lifespan (a real hang-up reaches it,
    which the in-process TestClient cannot do)."""
    _, _, upstream_url = upstream
    configured = settings.model_copy(
        update={"openai_base_url": f"{upstream_url}/v1", "openai_api_key": SecretStr("sk-test")}
    )
    app = create_app(settings=configured)
    with serve_in_thread(app, lifespan="on", start_seconds=60) as base_url:
        runtime: Runtime = app.state.runtime
        key = runtime.keys.create("leaver")
        token = issue_token(key.api_key, key.secret_key, 600)
        yield Gateway(base_url, runtime, token)


def test_a_client_leaving_a_stream_ends_the_upstream_call_at_once(
    gateway: Gateway, upstream: tuple[FakeOpenAI, OpenCalls, str]
) -> None:
    fake, calls, _ = upstream
    fake.reply = lambda text: "one two three four five six seven eight nine ten " * 5
    fake.inject(Fault.STALL, after_chunks=6)  # then nothing until its client leaves
    body = sdk_body(mode="stream", query="数到十", request_id="left-halfway")
    headers = {"Authorization": gateway.token}
    with (
        httpx.Client(base_url=gateway.url, timeout=30) as client,
        client.stream("POST", "/aigc/chat/", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        deadline = time.monotonic() + 10
        while not (fake.served and len(fake.served[-1].sent) == 6):
            assert time.monotonic() < deadline, "the upstream never started"
            time.sleep(0.01)
        time.sleep(0.2)  # the upstream is stalled, its connection open
        assert calls.open == 1 and not fake.served[-1].finished
        left = time.monotonic()
    # the client has gone: the gateway closes its upstream stream, not after the stall
    deadline = left + 5
    while calls.open and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls.open == 0, "the upstream call outlived the client"
    assert calls.ended[-1] - left < 1  # measured: a few milliseconds
    # recorded as aborted with what had been sent; the half answer is not remembered
    api_key = next(k.api_key for k in gateway.runtime.keys.list() if k.name == "leaver")
    rows = _usage_rows(gateway, api_key)
    assert [(row["status"], row["front_door"]) for row in rows] == [("aborted", "aigc")]
    assert rows[0]["completion_tokens"] > 0
    history = gateway.runtime.conversations.history(api_key, "left-halfway")
    assert history.get_messages() == []


@pytest.mark.parametrize("busy", [False, True])
def test_an_aigc_streams_head_leaves_at_once_unless_the_server_is_busy(
    gateway: Gateway,
    upstream: tuple[FakeOpenAI, OpenCalls, str],
    monkeypatch: pytest.MonkeyPatch,
    busy: bool,
) -> None:
    """Idle, the head is written while the vendor works; busy, it waits for the first line
    (here a hold of 30 s, which a vendor that sends no text makes it wait out)."""
    fake, _, _ = upstream
    monkeypatch.setattr(aigc_chat, "HEAD_HOLD_SECONDS", 30.0)
    if busy:  # every call counts as one too many
        monkeypatch.setattr(answer_first, "ANSWER_FIRST_UP_TO", 0)
    fake.inject(Fault.STALL, after_chunks=0)  # the head and role event, then no text
    body = sdk_body(mode="stream", query="你好")
    headers = {"Authorization": gateway.token}
    with httpx.Client(base_url=gateway.url, timeout=httpx.Timeout(30, read=2)) as client:
        opened = client.stream("POST", "/aigc/chat/", json=body, headers=headers)
        if busy:  # no head within the read timeout
            with pytest.raises(httpx.ReadTimeout), opened:
                pass
            return
        with opened as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            # (the head may even be ahead of the request at the upstream, which sends no text)


def test_a_v1_client_leaving_before_the_first_chunk_ends_the_upstream_call_at_once(
    gateway: Gateway, upstream: tuple[FakeOpenAI, OpenCalls, str]
) -> None:
    fake, calls, _ = upstream
    fake.inject(Fault.STALL, after_chunks=0)  # the head and role event, then no text
    body = {"model": ONLINE, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {gateway.token}"}
    with httpx.Client(base_url=gateway.url, timeout=httpx.Timeout(30, read=0.5)) as client:
        # the head waits for the first chunk, so the client gives up waiting for it
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=body, headers=headers)
        left = time.monotonic()
        assert calls.open == 1
    deadline = left + 5
    while calls.open and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls.open == 0, "the upstream call outlived the client"
    assert calls.ended[-1] - left < 1
    api_key = next(k.api_key for k in gateway.runtime.keys.list() if k.name == "leaver")
    rows = _usage_rows(gateway, api_key)
    assert [(row["status"], row["front_door"]) for row in rows] == [("aborted", "v1")]


def _usage_rows(gateway: Gateway, api_key: str) -> list[dict[str, Any]]:
    """The key's usage rows once the usage log has flushed them."""
    deadline = time.monotonic() + 10
    while True:
        with gateway.runtime.database.pool.connection() as conn:
            cursor = conn.execute(
                "SELECT status, front_door, completion_tokens FROM usage_events WHERE api_key = %s",
                (api_key,),
            )
            names = [column.name for column in cursor.description or ()]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)
