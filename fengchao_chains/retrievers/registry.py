"""The knowledge-base registry: which knowledge bases exist, and their tables.

Each knowledge base has a row in ``knowledge_bases`` (id, description, embedding model and
its dimensions, chunking settings) and two tables of its own, created with the row in one
transaction: ``kb_<id>_documents`` (one row per source document: its content hash, for
idempotent re-ingestion) and ``kb_<id>_chunks`` (text, metadata, content hash, embedding,
jieba-segmented search text and its tsvector), with an HNSW cosine index on the embedding
and a GIN index on the tsvector.  Identifiers are always quoted and values always bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.errors import UniqueViolation
from psycopg.rows import dict_row

from fengchao_chains.db import Database
from fengchao_chains.retrievers.errors import (
    KnowledgeBaseError,
    KnowledgeBaseExistsError,
    UnknownKnowledgeBaseError,
)

NEWS_STORE = "news_vector_store"
NEWS_STORE_DESCRIPTION = "资讯库"
KB_ID = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
DEFAULT_CHUNK_SIZE = 400
DEFAULT_CHUNK_OVERLAP = 60
# HNSW build parameters (pgvector's defaults); ef_search is set per query by the retriever.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64


@dataclass(frozen=True)
class KnowledgeBase:
    id: str
    description: str
    embedding_model: str
    dims: int
    chunk_size: int
    chunk_overlap: int
    created_at: datetime

    @property
    def documents_table(self) -> sql.Identifier:
        return sql.Identifier(f"kb_{self.id}_documents")

    @property
    def chunks_table_name(self) -> str:
        return f"kb_{self.id}_chunks"

    @property
    def chunks_table(self) -> sql.Identifier:
        return sql.Identifier(self.chunks_table_name)

    @property
    def vector_index_name(self) -> str:
        return f"kb_{self.id}_hnsw"

    @property
    def vector_index(self) -> sql.Identifier:
        return sql.Identifier(self.vector_index_name)


def check_kb_id(kb_id: str) -> str:
    if not KB_ID.match(kb_id):
        raise KnowledgeBaseError(
            f"invalid knowledge-base id {kb_id!r}: use 1-40 lower-case letters, digits and"
            " underscores, starting with a letter"
        )
    return kb_id


def vector_index_ddl(kb: KnowledgeBase, *, if_not_exists: bool = False) -> sql.Composed:
    """The HNSW cosine index of a knowledge base's chunk table."""
    return sql.SQL(
        "CREATE INDEX {exists} {index} ON {chunks} USING hnsw (embedding vector_cosine_ops)"
        " WITH (m = {m}, ef_construction = {ef})"
    ).format(
        exists=sql.SQL("IF NOT EXISTS" if if_not_exists else ""),
        index=kb.vector_index,
        chunks=kb.chunks_table,
        m=sql.Literal(HNSW_M),
        ef=sql.Literal(HNSW_EF_CONSTRUCTION),
    )


def _table_ddl(kb: KnowledgeBase) -> list[sql.Composed]:
    docs, chunks = kb.documents_table, kb.chunks_table
    return [
        sql.SQL(
            """CREATE TABLE {docs} (
                document_id text PRIMARY KEY,
                content_hash text NOT NULL,
                metadata jsonb NOT NULL DEFAULT '{{}}',
                chunk_count integer NOT NULL,
                ingested_at timestamptz NOT NULL DEFAULT now())"""
        ).format(docs=docs),
        sql.SQL(
            """CREATE TABLE {chunks} (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                document_id text NOT NULL REFERENCES {docs} ON DELETE CASCADE,
                position integer NOT NULL,
                content text NOT NULL,
                metadata jsonb NOT NULL DEFAULT '{{}}',
                content_hash text NOT NULL,
                embedding vector({dims}) NOT NULL,
                search_text text NOT NULL,
                tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, search_text))
                    STORED,
                UNIQUE (document_id, position))"""
        ).format(chunks=chunks, docs=docs, dims=sql.Literal(kb.dims)),
        vector_index_ddl(kb),
        sql.SQL("CREATE INDEX {index} ON {chunks} USING gin (tsv)").format(
            index=sql.Identifier(f"kb_{kb.id}_tsv"), chunks=chunks
        ),
        sql.SQL("CREATE INDEX {index} ON {chunks} (content_hash)").format(
            index=sql.Identifier(f"kb_{kb.id}_hash"), chunks=chunks
        ),
    ]


_COLUMNS = "id, description, embedding_model, dims, chunk_size, chunk_overlap, created_at"


class KnowledgeBaseRegistry:
    """Create, find, list and drop knowledge bases in one database."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def create(
        self,
        kb_id: str,
        *,
        embedding_model: str,
        dims: int,
        description: str = "",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> KnowledgeBase:
        """Register ``kb_id`` and create its tables, all in one transaction."""
        check_kb_id(kb_id)
        if not 0 <= chunk_overlap < chunk_size:
            raise KnowledgeBaseError(
                f"chunk overlap ({chunk_overlap}) must be at least 0 and below the chunk size"
                f" ({chunk_size})"
            )
        try:
            with self.database.pool.connection() as conn, conn.transaction():
                row = conn.execute(
                    f"INSERT INTO knowledge_bases"  # noqa: S608 (constant column list)
                    f" (id, description, embedding_model, dims, chunk_size, chunk_overlap)"
                    f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                    (kb_id, description, embedding_model, dims, chunk_size, chunk_overlap),
                ).fetchone()
                kb = KnowledgeBase(*_required(row))
                for statement in _table_ddl(kb):
                    conn.execute(statement)
        except UniqueViolation:
            raise KnowledgeBaseExistsError(f"knowledge base {kb_id!r} already exists") from None
        return kb

    def ensure(self, kb_id: str, **options: Any) -> KnowledgeBase:
        """The knowledge base ``kb_id``, created with ``options`` if it does not exist yet
        (safe when several processes start at once)."""
        try:
            return self.get(kb_id)
        except UnknownKnowledgeBaseError:
            pass
        try:
            return self.create(kb_id, **options)
        except KnowledgeBaseExistsError:
            return self.get(kb_id)

    def get(self, kb_id: str) -> KnowledgeBase:
        with self.database.pool.connection() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM knowledge_bases WHERE id = %s",  # noqa: S608
                (kb_id,),
            ).fetchone()
        if row is None:
            raise UnknownKnowledgeBaseError(kb_id, [kb.id for kb in self.all()])
        return KnowledgeBase(*row)

    async def aget(self, kb_id: str) -> KnowledgeBase:
        async with self.database.async_pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_COLUMNS} FROM knowledge_bases WHERE id = %s",  # noqa: S608
                (kb_id,),
            )
            row = await cursor.fetchone()
        if row is None:
            raise UnknownKnowledgeBaseError(kb_id, [kb.id for kb in await self.aall()])
        return KnowledgeBase(*row)

    def all(self) -> list[KnowledgeBase]:
        with self.database.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM knowledge_bases ORDER BY created_at, id"  # noqa: S608
            ).fetchall()
        return [KnowledgeBase(*row) for row in rows]

    async def aall(self) -> list[KnowledgeBase]:
        async with self.database.async_pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_COLUMNS} FROM knowledge_bases ORDER BY created_at, id"  # noqa: S608
            )
            rows = await cursor.fetchall()
        return [KnowledgeBase(*row) for row in rows]

    def drop(self, kb_id: str) -> None:
        """Delete the knowledge base, its documents and chunks, in one transaction."""
        kb = self.get(kb_id)
        with self.database.pool.connection() as conn, conn.transaction():
            conn.execute(sql.SQL("DROP TABLE {}").format(kb.chunks_table))
            conn.execute(sql.SQL("DROP TABLE {}").format(kb.documents_table))
            conn.execute("DELETE FROM knowledge_bases WHERE id = %s", (kb_id,))

    @staticmethod
    def record_embedding(
        conn: psycopg.Connection[Any], kb_id: str, *, model: str, dims: int
    ) -> None:
        """Record that ``kb_id`` is now embedded by ``model``, on ``conn`` so that it is part
        of the caller's transaction (re-embedding switches tables and model at once)."""
        conn.execute(
            "UPDATE knowledge_bases SET embedding_model = %s, dims = %s WHERE id = %s",
            (model, dims, kb_id),
        )

    def stats(self, kb: KnowledgeBase) -> dict[str, Any]:
        """Document and chunk counts and the last ingestion time."""
        query = sql.SQL(
            "SELECT (SELECT count(*) FROM {docs}) AS documents,"
            " (SELECT count(*) FROM {chunks}) AS chunks,"
            " (SELECT max(ingested_at) FROM {docs}) AS last_ingested_at"
        ).format(docs=kb.documents_table, chunks=kb.chunks_table)
        with self.database.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(query).fetchone()
        return dict(_required(row))


def _required(row: Any) -> Any:
    """A row a statement always returns (INSERT ... RETURNING, an aggregate)."""
    if row is None:
        raise KnowledgeBaseError("the database returned no row where one was certain")
    return row
