"""pgvector retrievers with ``top_k`` and ``threshold`` and the knowledge-base registry
(built in the knowledge-base issue)."""
