"""Metadata filters: every operator against real rows, bound values only, and a filtered
vector query that returns top_k rows whenever at least that many match."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from psycopg import sql

from fengchao_chains.db import Database
from fengchao_chains.retrievers import (
    ChunkRecord,
    ChunkStore,
    DocumentRecord,
    InvalidFilterError,
    KnowledgeBase,
    KnowledgeBaseRegistry,
    get_retriever,
)
from fengchao_chains.retrievers.search import SearchPlan, run_search

ALL = {"palace", "subway", "ev", "marathon", "phone", "rain", "vaccine", "school"}


def matching(database: Database, embeddings: Embeddings, where: dict[str, Any]) -> set[str]:
    retriever = get_retriever(
        "news",
        database=database,
        embeddings=embeddings,
        top_k=20,
        filter=where,
        search_type="vector",
    )
    return {doc.metadata["document_id"] for doc in retriever.invoke("新闻")}


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"source": "示例日报"}, {"palace", "subway", "school"}),
        ({"source": {"$ne": "示例日报"}}, ALL - {"palace", "subway", "school"}),
        ({"category": {"$in": ["体育", "健康"]}}, {"marathon", "vaccine"}),
        ({"category": {"$nin": ["体育", "健康"]}}, ALL - {"marathon", "vaccine"}),
        ({"published_at": {"$gte": "2024-04-01"}}, {"phone", "rain", "school"}),
        ({"published_at": {"$lt": "2024-01-01"}}, {"marathon", "vaccine"}),
        ({"views": {"$gt": 700}}, {"palace", "subway", "rain"}),  # numbers compare as numbers
        ({"views": {"$gte": 150, "$lte": 640}}, {"ev", "vaccine", "school"}),
        ({"views": {"$exists": False}}, {"phone"}),
        ({"title": {"$like": "%北京%"}}, {"subway"}),
        ({"title": {"$ilike": "%FLU%"}}, {"vaccine"}),
        ({"$or": [{"category": "体育"}, {"source": "财经周刊"}]}, {"marathon", "ev"}),
        ({"$and": [{"source": "Example Wire"}, {"views": {"$lt": 1000}}]}, {"vaccine"}),
        ({"$not": {"source": "Example Wire"}}, ALL - {"rain", "vaccine"}),
        ({"document_id": {"$in": ["ev", "rain"]}}, {"ev", "rain"}),
        ({"views": "1200"}, set()),  # a string is not the number 1200
        ({"no_such_field": "x"}, set()),
    ],
)
def test_operators(
    database: Database,
    news_kb: KnowledgeBase,
    use_embeddings: Embeddings,
    where: dict[str, Any],
    expected: set[str],
) -> None:
    assert matching(database, use_embeddings, where) == expected


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"source": {"$regex": ".*"}}, "unknown filter operator '\\$regex'"),
        ({"$nor": []}, "unknown filter operator"),
        ({"category": {"$in": "体育"}}, "non-empty list"),
        ({"views": {"$gt": [1, 2]}}, "single value"),
        ({"views": {"$exists": "yes"}}, "true or false"),
        ({"$or": []}, "non-empty list"),
        ({"title": {}}, "empty"),
    ],
)
def test_malformed_filters_are_refused(
    database: Database,
    news_kb: KnowledgeBase,
    use_embeddings: Embeddings,
    where: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(InvalidFilterError, match=message):
        matching(database, use_embeddings, where)


def test_field_names_and_values_are_bound_not_spliced(
    database: Database, news_kb: KnowledgeBase, use_embeddings: Embeddings
) -> None:
    hostile = "x') OR true; DROP TABLE knowledge_bases; --"
    assert matching(database, use_embeddings, {hostile: hostile}) == set()
    assert matching(database, use_embeddings, {"source": {"$like": hostile}}) == set()
    assert [kb.id for kb in KnowledgeBaseRegistry(database).all()] == ["news"]


def test_filtered_query_returns_top_k_when_enough_rows_match(database: Database) -> None:
    """2,000 chunks, 1% of them tagged: a top-10 query filtered on the tag returns 10 rows,
    the 10 nearest tagged ones, both through pgvector's iterative index scan and when the
    index scan comes back short (iterative scans off) and the exact scan takes over."""
    kb = KnowledgeBaseRegistry(database).create("many", embedding_model="random", dims=32)
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = []
    for i, vector in enumerate(vectors):
        metadata = {"tag": "rare" if i % 100 == 0 else "common"}
        digest = hashlib.sha256(vector.tobytes()).hexdigest()
        chunk = ChunkRecord(0, f"chunk {i}", metadata, digest, vector.tolist())
        records.append(DocumentRecord(f"d{i}", digest, metadata, [chunk]))
    ChunkStore(database, kb).write(records)
    query = rng.normal(size=32).astype(np.float32)
    rare = np.arange(0, 2000, 100)
    distances = 1 - vectors[rare] @ query / np.linalg.norm(query)
    expected = [f"d{rare[i]}" for i in np.argsort(distances)[:10]]

    def search(*, iterative: bool) -> list[str]:
        plan = SearchPlan(
            kb=kb,
            query_vector=query,
            search_type="vector",
            fetch_k=10,
            ef_search=database.hnsw_ef_search,
            text_terms=[],
            filter={"tag": "rare"},
        )
        with database.pool.connection() as conn:
            # at this size the planner would scan the table exactly: make it use the index
            conn.execute("SET enable_seqscan = off")
            if not iterative:
                conn.execute("SET hnsw.iterative_scan = off")
            explain = sql.SQL("EXPLAIN ") + plan.vector_sql(full_rows=True)
            lines = [row[0] for row in conn.execute(explain, plan.params).fetchall()]
            assert any("Index Scan using kb_many_hnsw" in line for line in lines)
            hits = run_search(conn, plan)
            conn.execute("RESET ALL")
        return [hit.document_id for hit in hits]

    assert search(iterative=True) == expected
    assert search(iterative=False) == expected
