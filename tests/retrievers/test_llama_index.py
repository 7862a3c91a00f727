"""LlamaIndex users get the same chunks, in the same order, with the same scores."""

from __future__ import annotations

import pytest
from langchain_core.embeddings import Embeddings

from fengchao_chains.db import Database
from fengchao_chains.retrievers import KnowledgeBase, get_retriever
from fengchao_chains.retrievers.llama_index import KnowledgeBaseRetriever


@pytest.mark.parametrize("question", ["故宫今年有多少游客？", "Will it flood this weekend?"])
async def test_same_results_as_the_langchain_retriever(
    database: Database, news_kb: KnowledgeBase, use_embeddings: Embeddings, question: str
) -> None:
    langchain = get_retriever("news", database=database, embeddings=use_embeddings, top_k=4)
    llama = KnowledgeBaseRetriever(langchain)
    documents = langchain.invoke(question)
    for nodes in (llama.retrieve(question), await llama.aretrieve(question)):
        assert [n.node.metadata["document_id"] for n in nodes] == [
            d.metadata["document_id"] for d in documents
        ]
        assert [n.score for n in nodes] == pytest.approx(
            [d.metadata["similarity"] for d in documents]
        )
        assert [n.node.get_content() for n in nodes] == [d.page_content for d in documents]
    await database.close_async_pool()
