"""TEIEmbeddings against the fake TEI (real e5 vectors): batching, prefixes, async, errors."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from fengchao_chains.embeddings import EmbeddingDimensionsError
from fengchao_chains.embeddings.e5 import E5Embeddings
from fengchao_chains.embeddings.tei import TEIEmbeddings
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContextTooLongError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    VendorConnectionError,
)
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.tei import FakeTEI
from tests.embeddings.conftest import DISTRACTORS, PAIRS

Served = tuple[FakeTEI, str]


def e5_on_tei(url: str, **overrides: object) -> TEIEmbeddings:
    """The catalog's e5-on-TEI shape: e5's prefixes added by the client."""
    arguments: dict[str, object] = {
        "model": "e5-small-tei",
        "dimensions": 384,
        "base_url": url,
        "query_prefix": "query: ",
        "document_prefix": "passage: ",
        "max_retries": 0,
    }
    return TEIEmbeddings(**(arguments | overrides))


@pytest.mark.parametrize("batch_size", [32, 7])
def test_a_hundred_texts_take_ceil_n_over_batch_size_requests(tei: Served, batch_size: int) -> None:
    fake, url = tei
    texts = [f"第{i}条：今日要闻 {i}" for i in range(100)]
    vectors = e5_on_tei(url, batch_size=batch_size).embed_documents(texts)
    assert len(vectors) == 100
    assert len(fake.requests) == math.ceil(100 / batch_size)
    sent = [t for request in fake.requests for t in request["body"]["inputs"]]
    assert sent == [f"passage: {t}" for t in texts]  # in order, each once, prefixed
    first = fake.requests[0]
    assert first["route"] == "/"  # huggingface_hub posts feature extraction to the root
    assert (first["body"]["normalize"], first["body"]["truncate"]) == (True, True)


def test_vectors_are_the_models_own(tei: Served) -> None:
    """Through TEI with e5's prefixes, vectors equal the packaged e5's, and retrieval works."""
    _, url = tei
    remote, local = e5_on_tei(url), E5Embeddings()
    documents = [p for _, p in PAIRS] + DISTRACTORS
    remote_documents = np.array(remote.embed_documents(documents))
    assert np.allclose(remote_documents, local.embed_documents(documents), atol=1e-5)
    query = PAIRS[2][0]
    assert np.allclose(remote.embed_query(query), local.embed_query(query), atol=1e-5)
    assert int(np.argmax(remote_documents @ np.array(remote.embed_query(query)))) == 2


async def test_async_equals_sync(tei: Served) -> None:
    fake, url = tei
    embeddings = e5_on_tei(url, batch_size=3)
    texts = [p for _, p in PAIRS]
    sync = embeddings.embed_documents(texts)
    calls = len(fake.requests)
    assert np.allclose(await embeddings.aembed_documents(texts), sync)
    assert len(fake.requests) == 2 * calls
    assert np.allclose(await embeddings.aembed_query("降息"), embeddings.embed_query("降息"))


async def test_empty_input_makes_no_request(tei: Served) -> None:
    fake, url = tei
    assert e5_on_tei(url).embed_documents([]) == []
    assert await e5_on_tei(url).aembed_documents([]) == []
    assert fake.requests == []


def test_rate_limit_is_retried_honouring_retry_after(tei: Served) -> None:
    fake, url = tei
    fake.inject(Fault.RATE_LIMITED, times=2, retry_after=0.05)
    assert len(e5_on_tei(url, max_retries=2).embed_query("hi")) == 384
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (Fault.RATE_LIMITED, RateLimitError, 429),
        (Fault.SERVER_ERROR, UpstreamError, 424),
        (Fault.UNAUTHORIZED, AuthenticationError, 401),
        (Fault.CONTEXT_TOO_LONG, ContextTooLongError, 413),
    ],
)
async def test_errors_are_mapped(
    tei: Served, fault: Fault, error: type[Exception], status: int
) -> None:
    fake, url = tei
    fake.inject(fault, times=2)
    with pytest.raises(error) as sync_info:
        e5_on_tei(url).embed_documents(["hi"])
    with pytest.raises(error) as async_info:
        await e5_on_tei(url).aembed_documents(["hi"])
    for info in (sync_info, async_info):
        assert getattr(info.value, "status_code", None) == status
        assert str(info.value).startswith("tei: ")
        assert "\n" not in str(info.value)


def test_teis_own_refusals_are_mapped(tei: Served) -> None:
    _, url = tei
    with pytest.raises(InvalidRequestError, match=r"batch size 40 > maximum allowed batch size"):
        e5_on_tei(url, batch_size=40).embed_documents(["x"] * 40)
    with pytest.raises(ContextTooLongError, match=r"must have less than 512 tokens"):
        e5_on_tei(url, truncate=False).embed_query("字" * 600)
    assert len(e5_on_tei(url).embed_query("字" * 600)) == 384  # truncate=True: cut, not refused


def test_unreachable_server_is_a_connection_error() -> None:
    embeddings = e5_on_tei("http://127.0.0.1:9", request_timeout=2)
    with pytest.raises(VendorConnectionError, match=r"^tei: "):
        embeddings.embed_query("hi")


def test_dimensions_mismatch_is_refused(tei: Served) -> None:
    _, url = tei
    with pytest.raises(EmbeddingDimensionsError, match=r"returned 384-dimensional vectors"):
        e5_on_tei(url, dimensions=1024).embed_documents(["hi"])


def test_key_is_sent_and_never_shown(tei: Served, caplog: pytest.LogCaptureFixture) -> None:
    fake, url = tei
    secret = "tei-secret-4f9a"
    fake.api_key = secret
    caplog.set_level(logging.DEBUG)
    good = e5_on_tei(url, api_key=secret, max_retries=1)
    fake.inject(Fault.RATE_LIMITED, retry_after=0.01)
    assert len(good.embed_query("hi")) == 384  # one retry, logged
    assert fake.last_request["headers"]["authorization"] == f"Bearer {secret}"
    bad = e5_on_tei(url, api_key="wrong-" + secret)
    with pytest.raises(AuthenticationError) as info:
        bad.embed_query("hi")
    assert "retrying" in caplog.text
    for shown in (repr(good), str(good), repr(bad), str(info.value), caplog.text):
        assert secret not in shown
