"""The pgvector retriever on a corpus with known answers: top_k, both threshold scales,
hybrid ranking, async, MMR and the errors a user can run into."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from fengchao_chains.db import Database
from fengchao_chains.retrievers import (
    EmbeddingMismatchError,
    KnowledgeBase,
    KnowledgeBaseError,
    UnknownKnowledgeBaseError,
    get_retriever,
    similarity_from_threshold,
    threshold_from_similarity,
)
from fengchao_chains.retrievers.search import MAX_TEXT_WORDS, SearchType, searchable_words

QUESTIONS = {
    "故宫今年有多少游客？": "palace",
    "北京早高峰通勤": "subway",
    "电动车卖得怎么样": "ev",
    "马拉松冠军成绩": "marathon",
    "X9527": "phone",
    "Will it flood this weekend?": "rain",
    "流感疫苗": "vaccine",
    "学生放学后在学校做什么": "school",
}


def ids(documents: list[Document]) -> list[str]:
    return [doc.metadata["document_id"] for doc in documents]


@pytest.mark.parametrize("search_type", ["hybrid", "vector"])
def test_each_question_finds_its_article_first(
    database: Database,
    news_kb: KnowledgeBase,
    use_embeddings: Embeddings,
    search_type: SearchType,
) -> None:
    retriever = get_retriever(
        "news", database=database, embeddings=use_embeddings, top_k=3, search_type=search_type
    )
    for question, expected in QUESTIONS.items():
        documents = retriever.invoke(question)
        assert len(documents) == 3
        assert ids(documents)[0] == expected, question


def test_documents_carry_the_score_contract(
    database: Database, news_kb: KnowledgeBase, use_embeddings: Embeddings
) -> None:
    retriever = get_retriever("news", database=database, embeddings=use_embeddings, top_k=8)
    documents = retriever.invoke("故宫游客")
    assert len(documents) == 8
    first = documents[0]
    assert first.page_content.startswith("故宫博物院今年接待游客")
    metadata = first.metadata
    assert metadata["title"] == "故宫博物院接待游客创新高"
    assert metadata["source"] == "示例日报"
    assert metadata["knowledge_base"] == "news"
    assert metadata["position"] == 0
    for doc in documents:
        assert doc.metadata["similarity"] == pytest.approx(1 - doc.metadata["distance"])
        assert -1 <= doc.metadata["similarity"] <= 1
    fused = [doc.metadata["fused_score"] for doc in documents]
    assert fused == sorted(fused, reverse=True)  # hybrid order is the fused order
    assert metadata["vector_rank"] == 1 and metadata["text_rank"] == 1


def test_vector_search_orders_by_similarity(
    database: Database, news_kb: KnowledgeBase, use_embeddings: Embeddings
) -> None:
    retriever = get_retriever(
        "news", database=database, embeddings=use_embeddings, top_k=8, search_type="vector"
    )
    similarities = [doc.metadata["similarity"] for doc in retriever.invoke("城市交通")]
    assert len(similarities) == 8
    assert similarities == sorted(similarities, reverse=True)


def test_threshold_scales_convert_both_ways() -> None:
    assert similarity_from_threshold(0) is None  # 0 disables
    assert similarity_from_threshold(500) == pytest.approx(0.5)
    assert similarity_from_threshold(200) == pytest.approx(0.8)  # smaller is stricter
    assert threshold_from_similarity(0.8) == pytest.approx(200)
    with pytest.raises(KnowledgeBaseError, match="threshold"):
        similarity_from_threshold(-1)


def test_fengchao_threshold_and_similarity_threshold_agree(
    database: Database, news_kb: KnowledgeBase, use_embeddings: Embeddings
) -> None:
    everything = get_retriever(
        "news", database=database, embeddings=use_embeddings, top_k=8, threshold=0
    ).invoke("故宫游客")
    assert len(everything) == 8  # threshold 0: off
    similarities = sorted(doc.metadata["similarity"] for doc in everything)
    # a cut between the best and the second best similarity keeps exactly one chunk
    cut = (similarities[-1] + similarities[-2]) / 2
    by_similarity = get_retriever(
        "news", database=database, embeddings=use_embeddings, top_k=8, score_threshold=cut
    ).invoke("故宫游客")
    by_threshold = get_retriever(
        "news",
        database=database,
        embeddings=use_embeddings,
        top_k=8,
        threshold=threshold_from_similarity(cut),
    ).invoke("故宫游客")
    assert ids(by_similarity) == ids(by_threshold) == ["palace"]
    strict = get_retriever(
        "news", database=database, embeddings=use_embeddings, top_k=8, threshold=0.001
    ).invoke("故宫游客")
    assert strict == []
    with pytest.raises(KnowledgeBaseError, match="not both"):
        get_retriever("news", database=database, threshold=500, score_threshold=0.5)


def test_hybrid_keyword_hit_is_still_judged_by_its_similarity(
    database: Database, news_kb: KnowledgeBase, use_embeddings: Embeddings
) -> None:
    """A rare keyword ranks its chunk first by full text, but a similarity threshold above
    that chunk's cosine similarity drops it: the fused score never replaces the similarity."""
    query = "X9527 起售价"
    hybrid = get_retriever("news", database=database, embeddings=use_embeddings, top_k=3)
    first = hybrid.invoke(query)[0]
    assert first.metadata["document_id"] == "phone"
    assert first.metadata["text_rank"] == 1
    above = first.metadata["similarity"] + 0.01
    strict = get_retriever(
        "news", database=database, embeddings=use_embeddings, top_k=3, score_threshold=above
    )
    assert "phone" not in ids(strict.invoke(query))


def test_text_search_matches_segmented_chinese_words(
    database: Database, news_kb: KnowledgeBase, use_embeddings: Embeddings
) -> None:
    retriever = get_retriever(
        "news", database=database, embeddings=use_embeddings, top_k=5, search_type="text"
    )
    assert ids(retriever.invoke("马拉松")) == ["marathon"]  # only chunks with the word
    assert ids(retriever.invoke("的了吗")) == []  # stopwords only: nothing searchable
    assert ids(retriever.invoke("flooding rivers"))[0] == "rain"


def test_text_ranking_weighs_a_rare_word_above_a_frequent_one(
    make_kb: Callable[..., KnowledgeBase], database: Database, use_embeddings: Embeddings
) -> None:
    """IDF: "launch" is in every chunk, "quantum" in one.  The chunk with the rare word
    once outranks the one with the common word three times (without IDF, as with
    ``ts_rank_cd``, the repeated common word won)."""
    filler: list[tuple[str, str, str, dict[str, Any]]] = [
        (f"launch-{i}", f"Product launch {i}", f"The launch of product {i} went well.", {})
        for i in range(10)
    ]
    make_kb(
        "idf",
        [
            *filler,
            ("repeated", "Launch week", "Launch after launch after launch this week.", {}),
            ("rare", "Computing", "A quantum processor was shown to researchers.", {}),
        ],
    )
    text = get_retriever(
        "idf", database=database, embeddings=use_embeddings, top_k=3, search_type="text"
    )
    found = ids(text.invoke("launch quantum"))
    assert found[:2] == ["rare", "repeated"]


def test_the_words_searched_are_plain_not_too_common_and_at_most_a_cap() -> None:
    common = {"公司": 5000.0, "今年": 9000.0}
    assert searchable_words(["公司", "x9527", "a|b", "起售价"], common) == ["x9527", "起售价"]
    assert searchable_words(["今年", "公司"], common) == ["公司"]  # all common: the rarest
    many = [f"w{i}" for i in range(MAX_TEXT_WORDS + 8)]
    rows = {word: float(i) for i, word in enumerate(reversed(many))}  # later words rarer
    assert searchable_words(many, rows) == many[8:]  # the rarest, in the query's order


async def test_async_matches_sync(
    database: Database, news_kb: KnowledgeBase, use_embeddings: Embeddings
) -> None:
    retriever = get_retriever(
        "news",
        database=database,
        embeddings=use_embeddings,
        top_k=4,
        filter={"source": "示例日报"},
    )
    for question in ("故宫今年有多少游客？", "学生放学后在学校做什么"):
        sync_docs = retriever.invoke(question)
        async_docs = await retriever.ainvoke(question)
        assert ids(async_docs) == ids(sync_docs)
        assert [d.metadata["similarity"] for d in async_docs] == pytest.approx(
            [d.metadata["similarity"] for d in sync_docs]
        )
    await database.close_async_pool()


def test_mmr_prefers_diverse_chunks(
    make_kb, database: Database, use_embeddings: Embeddings
) -> None:
    from tests.retrievers.conftest import NEWS

    palace = NEWS[0]
    copies = [(f"palace-copy-{i}", palace[1], palace[2], palace[3]) for i in range(3)]
    make_kb("dupes", [*NEWS, *copies])
    plain = get_retriever(
        "dupes", database=database, embeddings=use_embeddings, top_k=3, search_type="vector"
    ).invoke("故宫游客")
    diverse = get_retriever(
        "dupes",
        database=database,
        embeddings=use_embeddings,
        top_k=3,
        search_type="vector",
        mmr=True,
        mmr_lambda=0.3,
    ).invoke("故宫游客")
    palace_like = {"palace", *(c[0] for c in copies)}
    assert set(ids(plain)) <= palace_like  # three copies of the same article
    assert len(set(ids(diverse)) & palace_like) == 1  # one of them, then other news
    assert len(diverse) == 3


def test_unknown_knowledge_base_names_close_matches(
    database: Database, news_kb: KnowledgeBase, use_embeddings: Embeddings
) -> None:
    with pytest.raises(UnknownKnowledgeBaseError, match="did you mean 'news'"):
        get_retriever("newz", database=database, embeddings=use_embeddings)


def test_querying_with_another_embedding_model_is_refused(
    database: Database, news_kb: KnowledgeBase
) -> None:
    from fengchao_chains.embeddings import get_embeddings

    e5 = get_embeddings("multilingual-e5-small")
    with pytest.raises(EmbeddingMismatchError, match=r"use-multilingual-v3.*multilingual-e5"):
        get_retriever("news", database=database, embeddings=e5)


def test_a_query_vector_of_the_wrong_size_is_refused(
    database: Database, news_kb: KnowledgeBase
) -> None:
    class ThreeDims(Embeddings):
        """A foreign Embeddings object without a model name: only its size can be checked."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[1.0, 0.0, 0.0] for _ in texts]

        def embed_query(self, text: str) -> list[float]:
            return [1.0, 0.0, 0.0]

    retriever = get_retriever("news", database=database, embeddings=ThreeDims())
    with pytest.raises(EmbeddingMismatchError, match=r"3 dimensions.*stores 512"):
        retriever.invoke("故宫")
