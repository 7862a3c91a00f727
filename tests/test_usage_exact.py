"""Usage is exact: against a real ``fengchao serve``, every model call made through every
front door and mode (/aigc invoke, stream and async; LangServe invoke, batch and stream;
/v1 with and without streaming, and /v1/embeddings) is one ``usage_events`` row whose tokens
are the fake upstream's own account of that answer. Streams the client leaves halfway are rows too,
``aborted``, counting exactly what the upstream had sent (with the documented estimator,
as no vendor usage ever arrives for them).

Each step makes its calls, waits for their rows, and compares the new rows with the new
entries of the fake's own ledger (:attr:`FakeVendor.served`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import psycopg
import pytest
from langchain_core.messages import convert_to_messages
from psycopg.rows import dict_row

from fengchao_chains.callbacks.token_estimate import estimate_prompt_tokens, estimate_tokens
from fengchao_chains.testing.fakes._common import Fault, Served, count_tokens, echo
from fengchao_chains.testing.fakes.openai_embeddings import FakeOpenAIEmbeddings
from fengchao_chains.testing.serve import serve_in_thread
from tests.clients import ONLINE_MODEL, Gateway, running_gateway
from tests.server.test_openai_v1_embeddings_usage import KEY_ENV, PRICE, embeddings_catalog

QUESTION = "请用三句话介绍一下杭州西湖的历史和今天"
EMBEDDER = "fake-embeddings"


@pytest.fixture(scope="module")
def embeddings_upstream() -> Iterator[tuple[FakeOpenAIEmbeddings, str]]:
    fake = FakeOpenAIEmbeddings(encoder="use")
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture(scope="module")
def gateway(
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    embeddings_upstream: tuple[FakeOpenAIEmbeddings, str],
) -> Iterator[Gateway]:
    work_dir = tmp_path_factory.mktemp("usage-exact")
    catalog = embeddings_catalog(work_dir / "embeddings.toml", EMBEDDER, embeddings_upstream[1])
    with running_gateway(
        postgres_url,
        work_dir,
        FENGCHAO_USAGE_FLUSH_SECONDS="0.1",
        FENGCHAO_CATALOG_FILES=str(catalog),
        **{KEY_ENV: "sk-test"},
    ) as started:
        started.openai.reply = echo
        yield started


@pytest.fixture(scope="module")
def rows_of(gateway: Gateway, postgres_url: str) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    schema = gateway.env["FENGCHAO_DATABASE_SCHEMA"]
    with psycopg.connect(postgres_url, autocommit=True, row_factory=dict_row) as conn:

        def rows() -> list[dict[str, Any]]:
            query = f'SELECT * FROM "{schema}".usage_events ORDER BY id'
            return conn.execute(query).fetchall()

        yield rows


class Ledger:
    """The rows and the fake's answers that are new since the last step."""

    def __init__(self, gateway: Gateway, rows: Callable[[], list[dict[str, Any]]]) -> None:
        self.gateway, self.rows = gateway, rows
        self.seen_rows, self.seen_served = len(rows()), len(gateway.openai.served)

    def step(self, calls: int) -> list[tuple[dict[str, Any], Served]]:
        """Wait for ``calls`` new answers and rows; pair them up in order of their end."""
        served, rows = self._wait(calls)
        assert len(rows) == len(served) == calls, (rows, served)
        rows.sort(key=lambda row: row["ended_at"])
        return list(zip(rows, served, strict=True))

    def _wait(self, calls: int) -> tuple[list[Served], list[dict[str, Any]]]:
        deadline = time.monotonic() + 20
        while True:
            served = self.gateway.openai.served[self.seen_served :]
            rows = self.rows()[self.seen_rows :]
            if (len(served) >= calls and len(rows) >= calls) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # nothing more should come
        served = self.gateway.openai.served[self.seen_served :]
        rows = self.rows()[self.seen_rows :]
        self.seen_served += len(served)
        self.seen_rows += len(rows)
        return list(served), rows


def assert_exact(row: dict[str, Any], served: Served, door: str, gateway: Gateway) -> None:
    """A finished call: the vendor's own figures, not estimated."""
    assert served.finished
    assert row["api_key"] == gateway.api_key and row["model"] == ONLINE_MODEL
    assert row["front_door"] == door and row["status"] == "ok" and not row["estimated"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        served.prompt_tokens,
        served.completion_tokens,
    )
    assert row["cost"] > 0


def assert_aborted(row: dict[str, Any], served: Served, door: str) -> None:
    """A stream left halfway: what the upstream sent before the client left, estimated."""
    assert not served.finished and served.completion_tokens > 0
    assert row["front_door"] == door and row["status"] == "aborted" and row["estimated"]
    assert row["completion_tokens"] == estimate_tokens("".join(served.sent))
    assert row["prompt_tokens"] == estimate_prompt_tokens(convert_to_messages(served.messages))
    assert row["streamed"] and row["ttft_ms"] is not None


def aigc(gateway: Gateway, **fields: Any) -> dict[str, Any]:
    body = {"model": ONLINE_MODEL, "query": QUESTION, "mode": "invoke"} | fields
    return body


def leave_after_some(
    gateway: Gateway, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    """Start a stream whose upstream stalls after 3 pieces, read a little, then hang up."""
    requests_before = len(gateway.openai.requests)
    gateway.openai.inject(Fault.STALL, after_chunks=3)
    with (
        httpx.Client(base_url=gateway.base_url, timeout=30) as client,
        client.stream("POST", path, json=body, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        chunks = response.iter_bytes()
        next(chunks)
        deadline = time.monotonic() + 10
        while len(gateway.openai.requests) == requests_before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # the three pieces are through; the upstream is stalled
    # leaving the block closes the connection: the client has gone


def test_every_front_door_and_mode_records_the_upstreams_own_figures(
    gateway: Gateway, rows_of: Callable[[], list[dict[str, Any]]]
) -> None:
    ledger = Ledger(gateway, rows_of)
    headers = {"Authorization": gateway.token()}
    http = httpx.Client(base_url=gateway.base_url, timeout=60, headers=headers)

    # /aigc: invoke, stream, async
    invoked = http.post("/aigc/chat/", json=aigc(gateway)).json()
    assert invoked["status"] == 200, invoked
    ((row, served),) = ledger.step(1)
    assert_exact(row, served, "aigc", gateway)
    assert invoked["usage"]["prompt_tokens"] == row["prompt_tokens"]
    assert invoked["usage"]["cost"] == pytest.approx(float(row["cost"]))
    with http.stream("POST", "/aigc/chat/", json=aigc(gateway, mode="stream")) as response:
        lines = [json.loads(line[5:]) for line in response.iter_lines() if line]
    ((row, served),) = ledger.step(1)
    assert_exact(row, served, "aigc", gateway)
    assert lines[-1]["usage"]["completion_tokens"] == row["completion_tokens"]
    task = http.post("/aigc/chat/", json=aigc(gateway, mode="async")).json()
    task_id = task["choices"][0]["message"]["content"]
    ((row, served),) = ledger.step(1)
    assert_exact(row, served, "task", gateway)
    result = http.post("/aigc/chat/", json=aigc(gateway, mode="async_result", task_id=task_id))
    assert result.json()["usage"]["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]

    # LangServe: invoke, batch of two, stream
    chat = {"model": ONLINE_MODEL, "query": QUESTION}
    assert http.post("/chat/invoke", json={"input": chat}).status_code == 200
    ((row, served),) = ledger.step(1)
    assert_exact(row, served, "langserve", gateway)
    assert (
        http.post("/chat/batch", json={"inputs": [chat, chat | {"query": "再说一遍"}]}).status_code
        == 200
    )
    for row, served in ledger.step(2):
        assert_exact(row, served, "langserve", gateway)
    with http.stream("POST", "/chat/stream", json={"input": chat}) as response:
        assert "data:" in response.read().decode()
    ((row, served),) = ledger.step(1)
    assert_exact(row, served, "langserve", gateway)

    # /v1 through the official SDK, the key pair as its api_key
    client = openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=f"{gateway.api_key}:{gateway.secret_key}"
    )
    messages: Any = [{"role": "user", "content": QUESTION}]
    answer = client.chat.completions.create(model=ONLINE_MODEL, messages=messages)
    ((row, served),) = ledger.step(1)
    assert_exact(row, served, "v1", gateway)
    assert answer.usage is not None and answer.usage.prompt_tokens == row["prompt_tokens"]
    stream = client.chat.completions.create(
        model=ONLINE_MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    final = [chunk for chunk in stream][-1]
    ((row, served),) = ledger.step(1)
    assert_exact(row, served, "v1", gateway)
    assert final.usage is not None and final.usage.completion_tokens == row["completion_tokens"]
    list(client.chat.completions.create(model=ONLINE_MODEL, messages=messages, stream=True))
    ((row, served),) = ledger.step(1)
    assert_exact(row, served, "v1", gateway)

    # streams the client leaves halfway, at each door that streams
    leave_after_some(gateway, "/aigc/chat/", aigc(gateway, mode="stream"), headers)
    ((row, served),) = ledger.step(1)
    assert_aborted(row, served, "aigc")
    leave_after_some(gateway, "/chat/stream", {"input": chat}, headers)
    ((row, served),) = ledger.step(1)
    assert_aborted(row, served, "langserve")
    v1_body = {"model": ONLINE_MODEL, "messages": messages, "stream": True}
    leave_after_some(gateway, "/v1/chat/completions", v1_body, headers)
    ((row, served),) = ledger.step(1)
    assert_aborted(row, served, "v1")

    # and the sums: every token the upstream served (or sent, for the aborted) is counted once
    rows = rows_of()
    assert len(rows) == len(gateway.openai.served) == len({row["run_id"] for row in rows})
    http.close()


def test_v1_embeddings_record_the_upstreams_own_counts(
    gateway: Gateway,
    embeddings_upstream: tuple[FakeOpenAIEmbeddings, str],
    rows_of: Callable[[], list[dict[str, Any]]],
) -> None:
    """One row per embeddings call, its tokens the upstream's reported counts summed over the
    batches it was asked in (three texts: two requests)."""
    fake = embeddings_upstream[0]
    seen = len(rows_of())
    client = openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=f"{gateway.api_key}:{gateway.secret_key}"
    )
    texts = [QUESTION, "再说一遍", "the quick brown fox"]
    answer = client.embeddings.create(model=EMBEDDER, input=texts)
    deadline = time.monotonic() + 20
    while len(rows_of()) == seen and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # nothing more should come
    (row,) = rows_of()[seen:]
    counted = [sum(count_tokens(t) for t in sent["body"]["input"]) for sent in fake.requests]
    assert len(counted) == 2
    assert row["api_key"] == gateway.api_key and row["model"] == EMBEDDER
    assert row["front_door"] == "v1" and row["status"] == "ok" and not row["estimated"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (sum(counted), 0)
    assert float(row["cost"]) == pytest.approx(sum(counted) * PRICE / 1000)
    assert answer.usage.prompt_tokens == row["prompt_tokens"]
