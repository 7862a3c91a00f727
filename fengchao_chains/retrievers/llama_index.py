"""The knowledge-base retriever for LlamaIndex users: the same search, the same results.

It wraps :class:`~fengchao_chains.retrievers.pgvector.PGVectorRetriever` rather than
re-implementing the search, so a LlamaIndex query engine and a LangChain chain over one
knowledge base see the same chunks in the same order.  Each ``NodeWithScore.score`` is the
cosine similarity; the node's metadata carries the full score contract (similarity,
distance, fused score and ranks).  Needs the ``llamaindex`` extra (``llama-index-core``).
"""

from __future__ import annotations

from typing import Any

from langchain_core.documents import Document
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from fengchao_chains.retrievers.pgvector import PGVectorRetriever


def node_from_document(document: Document) -> NodeWithScore:
    metadata = dict(document.metadata)
    node = TextNode(
        id_=document.id or f"{metadata['document_id']}:{metadata['position']}",
        text=document.page_content,
        metadata=metadata,
        # LlamaIndex prompts include metadata by default; the scores only add noise there
        excluded_llm_metadata_keys=[k for k in metadata if k not in ("title", "source", "url")],
        excluded_embed_metadata_keys=list(metadata),
    )
    return NodeWithScore(node=node, score=metadata["similarity"])


class KnowledgeBaseRetriever(BaseRetriever):
    """A LlamaIndex retriever over one knowledge base::

    from fengchao_chains.retrievers import get_retriever
    from fengchao_chains.retrievers.llama_index import KnowledgeBaseRetriever

    retriever = KnowledgeBaseRetriever(get_retriever("news_vector_store", top_k=5))
    nodes = retriever.retrieve("故宫今年有多少游客？")
    """

    def __init__(self, retriever: PGVectorRetriever, **kwargs: Any) -> None:
        self.retriever = retriever
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        documents = self.retriever.invoke(query_bundle.query_str)
        return [node_from_document(document) for document in documents]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        documents = await self.retriever.ainvoke(query_bundle.query_str)
        return [node_from_document(document) for document in documents]
