"""Knowledge bases: the registry, the chunk store and the pgvector retriever.

``get_retriever("news_vector_store", top_k=5, threshold=500)`` is the one-line entry point;
see :mod:`fengchao_chains.retrievers.pgvector` for the score contract.
"""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings

from fengchao_chains.db import Database, get_database
from fengchao_chains.retrievers.errors import (
    EmbeddingMismatchError,
    InvalidFilterError,
    KnowledgeBaseError,
    KnowledgeBaseExistsError,
    UnknownKnowledgeBaseError,
)
from fengchao_chains.retrievers.pgvector import (
    PGVectorRetriever,
    similarity_from_threshold,
    threshold_from_similarity,
)
from fengchao_chains.retrievers.registry import (
    NEWS_STORE,
    KnowledgeBase,
    KnowledgeBaseRegistry,
)
from fengchao_chains.retrievers.search import SearchType
from fengchao_chains.retrievers.store import ChunkRecord, ChunkStore, DocumentRecord
from fengchao_chains.settings import Settings


def get_retriever(
    knowledge_base: str = NEWS_STORE,
    *,
    top_k: int = 5,
    threshold: float | None = None,
    score_threshold: float | None = None,
    filter: dict[str, Any] | None = None,
    search_type: SearchType = "hybrid",
    database: Database | None = None,
    embeddings: Embeddings | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> PGVectorRetriever:
    """A retriever over ``knowledge_base``.

    ``threshold`` is the fengchao API's scale (cosine distance x 1000, 0 = off; 500 keeps
    chunks with similarity >= 0.5); ``score_threshold`` is a minimum cosine similarity.  Give
    one or neither.  ``database`` defaults to the process-wide one of the default settings,
    ``embeddings`` to the knowledge base's own model.
    """
    score_threshold = _min_similarity(threshold, score_threshold)
    database = database or get_database()
    kb = KnowledgeBaseRegistry(database).get(knowledge_base)
    return _retriever(
        kb,
        database,
        embeddings,
        settings,
        top_k=top_k,
        score_threshold=score_threshold,
        filter=filter,
        search_type=search_type,
        **options,
    )


async def aget_retriever(
    knowledge_base: str = NEWS_STORE,
    *,
    top_k: int = 5,
    threshold: float | None = None,
    score_threshold: float | None = None,
    filter: dict[str, Any] | None = None,
    search_type: SearchType = "hybrid",
    database: Database | None = None,
    embeddings: Embeddings | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> PGVectorRetriever:
    """:func:`get_retriever` for async code: the knowledge base is looked up on the async
    pool, so a server's event loop is not blocked."""
    score_threshold = _min_similarity(threshold, score_threshold)
    database = database or get_database()
    kb = await KnowledgeBaseRegistry(database).aget(knowledge_base)
    return _retriever(
        kb,
        database,
        embeddings,
        settings,
        top_k=top_k,
        score_threshold=score_threshold,
        filter=filter,
        search_type=search_type,
        **options,
    )


def _min_similarity(threshold: float | None, score_threshold: float | None) -> float | None:
    if threshold is not None and score_threshold is not None:
        raise KnowledgeBaseError("give threshold (fengchao scale) or score_threshold, not both")
    if threshold is not None:
        return similarity_from_threshold(threshold)
    return score_threshold


def _retriever(
    kb: KnowledgeBase,
    database: Database,
    embeddings: Embeddings | None,
    settings: Settings | None,
    **fields: Any,
) -> PGVectorRetriever:
    if embeddings is None:
        from fengchao_chains.embeddings import get_embeddings

        embeddings = get_embeddings(kb.embedding_model, settings)
    return PGVectorRetriever(knowledge_base=kb, database=database, embeddings=embeddings, **fields)


__all__ = [
    "NEWS_STORE",
    "ChunkRecord",
    "ChunkStore",
    "DocumentRecord",
    "EmbeddingMismatchError",
    "InvalidFilterError",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "KnowledgeBaseExistsError",
    "KnowledgeBaseRegistry",
    "PGVectorRetriever",
    "UnknownKnowledgeBaseError",
    "aget_retriever",
    "get_retriever",
    "similarity_from_threshold",
    "threshold_from_similarity",
]
