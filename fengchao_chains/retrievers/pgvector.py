"""The knowledge-base retriever: a LangChain ``BaseRetriever`` over one pgvector knowledge base.

Scores (the one contract every front door keeps):

* each Document's ``metadata["similarity"]`` is the cosine similarity of the chunk to the
  query (1 - cosine distance; higher is closer) and ``metadata["distance"]`` the raw cosine
  distance; hybrid search adds ``fused_score`` (reciprocal rank fusion, used only for order),
  ``vector_rank`` and ``text_rank``;
* ``score_threshold`` (this class) is a minimum similarity;
* the fengchao API's ``threshold`` is the cosine distance x 1000, 0 disabling it (about
  0-1100 in practice; smaller is stricter): ``threshold=500`` keeps chunks with
  similarity >= 0.5.  :func:`similarity_from_threshold` converts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from pydantic import ConfigDict, Field, model_validator

from fengchao_chains.db import Database
from fengchao_chains.retrievers.errors import EmbeddingMismatchError, KnowledgeBaseError
from fengchao_chains.retrievers.registry import KnowledgeBase
from fengchao_chains.retrievers.search import (
    Hit,
    SearchPlan,
    SearchType,
    arun_search,
    run_search,
)
from fengchao_chains.retrievers.text_search import query_terms


def similarity_from_threshold(threshold: float) -> float | None:
    """The fengchao API's ``threshold`` (cosine distance x 1000; 0 = off) as a minimum
    cosine similarity, or None when it is off."""
    if threshold < 0:
        raise KnowledgeBaseError(f"threshold must be 0 (off) or positive, got {threshold}")
    return None if threshold == 0 else 1.0 - threshold / 1000.0


def threshold_from_similarity(similarity: float) -> float:
    """The inverse: a minimum similarity on the fengchao API's scale."""
    return (1.0 - similarity) * 1000.0


class PGVectorRetriever(BaseRetriever):
    """Top-k chunks of one knowledge base for a query, hybrid (vector + full text) by
    default.  Build it with :func:`fengchao_chains.retrievers.get_retriever`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    knowledge_base: KnowledgeBase
    database: Database = Field(exclude=True, repr=False)
    embeddings: Embeddings = Field(exclude=True, repr=False)
    top_k: int = Field(default=5, ge=1, le=1000)
    score_threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="Minimum cosine similarity; None: off."
    )
    filter: dict[str, Any] | None = None
    search_type: SearchType = "hybrid"
    fetch_k: int | None = Field(
        default=None, ge=1, le=1000, description="Candidates per search branch."
    )
    rrf_k: int = Field(default=60, ge=1)
    mmr: bool = False
    mmr_lambda: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _same_embedding_model(self) -> PGVectorRetriever:
        model = getattr(self.embeddings, "model", None)
        if isinstance(model, str) and model != self.knowledge_base.embedding_model:
            kb = self.knowledge_base
            raise EmbeddingMismatchError(
                f"knowledge base {kb.id!r} was embedded with {kb.embedding_model!r}"
                f" ({kb.dims} dimensions); querying it with {model!r} would compare unrelated"
                f" vectors. Use get_embeddings({kb.embedding_model!r}), or re-embed it with"
                f" `fengchao kb reembed {kb.id} --model {model}`"
            )
        return self

    # ---------------------------------------------------------------- the search ------
    def _plan(self, query: str, vector: list[float]) -> SearchPlan:
        if len(vector) != self.knowledge_base.dims:
            raise EmbeddingMismatchError(
                f"the query embedding has {len(vector)} dimensions; knowledge base"
                f" {self.knowledge_base.id!r} stores {self.knowledge_base.dims}"
            )
        wanted = self.top_k * 4 if self.mmr else self.top_k
        return SearchPlan(
            kb=self.knowledge_base,
            query_vector=np.asarray(vector, dtype=np.float32),
            search_type=self.search_type,
            fetch_k=self.fetch_k or max(wanted, 40),
            ef_search=self.database.hnsw_ef_search,
            text_terms=query_terms(query) if self.search_type != "vector" else [],
            filter=self.filter,
            rrf_k=self.rrf_k,
            with_embeddings=self.mmr,
        )

    def _documents(self, plan: SearchPlan, hits: list[Hit]) -> list[Document]:
        if self.score_threshold is not None:
            hits = [hit for hit in hits if hit.similarity >= self.score_threshold]
        if self.mmr and hits:
            embeddings = np.vstack([np.asarray(hit.embedding, dtype=np.float32) for hit in hits])
            keep = maximal_marginal_relevance(
                plan.query_vector,
                embeddings,  # type: ignore[arg-type]  # it takes any 2-D array
                lambda_mult=self.mmr_lambda,
                k=self.top_k,
            )
            hits = [hits[i] for i in keep]
        return [self._document(hit) for hit in hits[: self.top_k]]

    def _document(self, hit: Hit) -> Document:
        metadata: dict[str, Any] = {
            **hit.metadata,
            "knowledge_base": self.knowledge_base.id,
            "document_id": hit.document_id,
            "position": hit.position,
            "chunk_id": hit.chunk_id,
            "similarity": hit.similarity,
            "distance": hit.distance,
        }
        if self.search_type != "vector":
            metadata |= {
                "fused_score": hit.fused_score,
                "vector_rank": hit.vector_rank,
                "text_rank": hit.text_rank,
            }
        return Document(page_content=hit.content, metadata=metadata, id=str(hit.chunk_id))

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        plan = self._plan(query, self.embeddings.embed_query(query))
        with self.database.pool.connection() as conn:
            hits = run_search(conn, plan)
        return self._documents(plan, hits)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        plan = self._plan(query, await self.embeddings.aembed_query(query))
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            hits = await arun_search(conn, plan)
        return self._documents(plan, hits)
