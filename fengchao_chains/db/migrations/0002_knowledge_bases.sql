-- The knowledge-base registry.  Each knowledge base's own tables (its documents and its
-- chunks with their embeddings) are created by KnowledgeBaseRegistry.create, because their
-- vector column's size depends on the embedding model chosen for that knowledge base.

CREATE TABLE knowledge_bases (
    id text PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9_]{0,39}$'),
    description text NOT NULL DEFAULT '',
    embedding_model text NOT NULL CHECK (embedding_model <> ''),
    dims integer NOT NULL CHECK (dims BETWEEN 1 AND 16000),
    chunk_size integer NOT NULL CHECK (chunk_size > 0),
    chunk_overlap integer NOT NULL CHECK (chunk_overlap >= 0 AND chunk_overlap < chunk_size),
    created_at timestamptz NOT NULL DEFAULT now()
);
