"""``GET /aigc/kgs`` and the sample news store the server makes and loads at start-up."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from fengchao_chains.ingest.sample import load_sample_news, sample_news_path
from fengchao_chains.retrievers import (
    ChunkStore,
    DocumentRecord,
    KnowledgeBaseRegistry,
    get_retriever,
)
from fengchao_chains.runtime import Runtime
from fengchao_chains.server import create_app
from fengchao_chains.settings import Settings

USE = "use-multilingual-v3"
QUESTION = "故宫的钟表特展展出多少件藏品？"
SAMPLE_DOCUMENTS = sum(1 for line in sample_news_path().open(encoding="utf-8") if line.strip())


def check_sample_search(runtime: Runtime) -> None:
    loader = runtime.sample_news
    assert loader is not None
    assert loader.wait(timeout=240), "the sample news load did not finish"
    assert loader.error is None
    assert loader.report is not None
    assert loader.report.new == SAMPLE_DOCUMENTS
    retriever = get_retriever(
        "news_vector_store",
        top_k=5,
        threshold=500,
        database=runtime.database,
        settings=runtime.settings,
    )
    documents = retriever.invoke(QUESTION)
    assert documents
    assert all(d.metadata["similarity"] >= 0.5 for d in documents)
    assert "故宫" in documents[0].metadata["title"]
    assert documents[0].metadata["url"].startswith("https://")


def test_a_started_app_lists_the_news_store_and_loads_the_sample(settings: Settings) -> None:
    loading = {"embedding_model": USE, "load_sample_news": True}
    app = create_app(settings=settings.model_copy(update=loading))
    with TestClient(app) as client:
        for path in ("/aigc/kgs", "/aigc/kgs/"):
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 200, path
            payload = response.json()
            assert (payload["status"], payload["msg"]) == (200, "执行成功")
            assert [(kb["id"], kb["desc"]) for kb in payload["data"]] == [
                ("news_vector_store", "资讯库")
            ]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", payload["data"][0]["created"])
        runtime: Runtime = app.state.runtime
        check_sample_search(runtime)
        kb = KnowledgeBaseRegistry(runtime.database).get("news_vector_store")
        assert (kb.embedding_model, kb.dims) == (USE, 512)
        # a second load finds the sample complete and writes nothing
        again = load_sample_news(runtime.database, runtime.settings)
        assert again is not None
        assert (again.unchanged, again.chunks_written, again.chunks_embedded) == (
            SAMPLE_DOCUMENTS,
            0,
            0,
        )
        # a store with documents of its own is left alone
        ChunkStore(runtime.database, kb).write([DocumentRecord("mine", "h", {}, [])])
        assert load_sample_news(runtime.database, runtime.settings) is None


def test_other_knowledge_bases_are_listed_too_and_the_load_can_be_turned_off(
    settings: Settings,
) -> None:
    quiet = settings.model_copy(update={"embedding_model": USE, "load_sample_news": False})
    app = create_app(settings=quiet)
    with TestClient(app) as client:
        runtime: Runtime = app.state.runtime
        assert runtime.sample_news is None
        KnowledgeBaseRegistry(runtime.database).create(
            "law", description="法规库", embedding_model=USE, dims=512
        )
        data = client.get("/aigc/kgs").json()["data"]
        assert [(kb["id"], kb["desc"]) for kb in data] == [
            ("news_vector_store", "资讯库"),
            ("law", "法规库"),
        ]
        stats = KnowledgeBaseRegistry(runtime.database).stats(
            KnowledgeBaseRegistry(runtime.database).get("news_vector_store")
        )
        assert stats["documents"] == 0


def test_shutdown_during_the_load_stops_it_and_the_next_start_finishes_it(
    settings: Settings,
) -> None:
    fast = settings.model_copy(update={"embedding_model": USE, "load_sample_news": True})
    with TestClient(create_app(settings=fast)) as client:
        assert client.get("/aigc/kgs").status_code == 200
    # shut down at once: the load stopped after a whole batch (or before writing any)
    app = create_app(settings=fast)
    with TestClient(app):
        runtime: Runtime = app.state.runtime
        loader = runtime.sample_news
        assert loader is not None
        assert loader.wait(timeout=240)
        assert loader.report is not None
        assert loader.report.new + loader.report.unchanged == SAMPLE_DOCUMENTS
        stats = KnowledgeBaseRegistry(runtime.database).stats(
            KnowledgeBaseRegistry(runtime.database).get("news_vector_store")
        )
        assert stats["documents"] == SAMPLE_DOCUMENTS


@pytest.mark.slow
def test_the_sample_with_the_default_embedding_model(settings: Settings) -> None:
    """multilingual-e5-small, the default: about 10 s to embed the sample."""
    app = create_app(settings=settings.model_copy(update={"load_sample_news": True}))
    with TestClient(app) as client:
        assert client.get("/aigc/kgs").json()["data"][0]["id"] == "news_vector_store"
        check_sample_search(app.state.runtime)
