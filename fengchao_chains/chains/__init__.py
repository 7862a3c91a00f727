"""Composed runnables: the chains every front door (LangServe, ``/aigc``, ``/v1``) serves."""

from fengchao_chains.chains.knowledge import document_chunks, knowledge_chain

__all__ = ["document_chunks", "knowledge_chain"]
