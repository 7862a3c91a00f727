"""Writing a knowledge base: documents and their chunks, one transaction per batch.

A batch of documents is written all or nothing: each document's row is upserted (which locks
it, so two writers of one document queue up instead of interleaving), its old chunks are
deleted and its new chunks are copied in with binary COPY.  An interrupted run therefore
leaves every document either fully written or untouched, and a re-run that skips documents
whose stored content hash matches ends in exactly the state of an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from fengchao_chains.db import Database
from fengchao_chains.retrievers.errors import EmbeddingMismatchError
from fengchao_chains.retrievers.registry import KnowledgeBase, vector_index_ddl
from fengchao_chains.retrievers.text_search import segment


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk to store; ``content_hash`` identifies the text that was embedded, so an
    unchanged chunk of a changed document can keep its embedding."""

    position: int
    content: str
    metadata: dict[str, Any]
    content_hash: str
    embedding: Sequence[float]
    search_text: str | None = None
    """The jieba-segmented text for full-text search; None: segmented when written.  A
    pipeline that segments while its writer thread copies the previous batch saves the
    writer that work."""


@dataclass(frozen=True)
class DocumentRecord:
    """One source document and all of its chunks (they replace any stored before)."""

    document_id: str
    content_hash: str
    metadata: dict[str, Any]
    chunks: Sequence[ChunkRecord]


@dataclass(frozen=True)
class DocumentInfo:
    document_id: str
    content_hash: str
    metadata: dict[str, Any]
    chunk_count: int
    ingested_at: datetime


_COPY_COLUMNS = (
    "document_id",
    "position",
    "content",
    "metadata",
    "content_hash",
    "embedding",
    "search_text",
)
_COPY_TYPES = ["text", "int4", "text", "jsonb", "text", "vector", "text"]


class ChunkStore:
    """The documents and chunks of one knowledge base."""

    def __init__(self, database: Database, kb: KnowledgeBase) -> None:
        self.database = database
        self.kb = kb

    def document_hashes(self, document_ids: Sequence[str]) -> dict[str, str]:
        """The stored content hash of each of ``document_ids`` that is stored."""
        query = sql.SQL(
            "SELECT document_id, content_hash FROM {} WHERE document_id = ANY(%s)"
        ).format(self.kb.documents_table)
        with self.database.pool.connection() as conn:
            rows = conn.execute(query, (list(document_ids),)).fetchall()
        return {document_id: content_hash for document_id, content_hash in rows}

    def stored_embeddings(self, content_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Embeddings already stored for chunk texts with these hashes (to avoid embedding an
        unchanged chunk again)."""
        query = sql.SQL(
            "SELECT DISTINCT ON (content_hash) content_hash, embedding FROM {}"
            " WHERE content_hash = ANY(%s)"
        ).format(self.kb.chunks_table)
        with self.database.pool.connection() as conn:
            rows = conn.execute(query, (list(content_hashes),)).fetchall()
        return {content_hash: embedding for content_hash, embedding in rows}

    def write(self, documents: Sequence[DocumentRecord]) -> int:
        """Store ``documents`` (replacing earlier versions) in one transaction; returns the
        number of chunks written."""
        if not documents:
            return 0
        ordered = sorted({d.document_id: d for d in documents}.values(), key=_document_id)
        for document in ordered:
            for chunk in document.chunks:
                if len(chunk.embedding) != self.kb.dims:
                    raise EmbeddingMismatchError(
                        f"a chunk of {document.document_id!r} has a {len(chunk.embedding)}-"
                        f"dimensional embedding; knowledge base {self.kb.id!r} stores"
                        f" {self.kb.dims} dimensions ({self.kb.embedding_model})"
                    )
        docs, chunks = self.kb.documents_table, self.kb.chunks_table
        upsert = sql.SQL(
            "INSERT INTO {} (document_id, content_hash, metadata, chunk_count)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (document_id) DO UPDATE SET"
            " content_hash = EXCLUDED.content_hash, metadata = EXCLUDED.metadata,"
            " chunk_count = EXCLUDED.chunk_count, ingested_at = now()"
        ).format(docs)
        delete = sql.SQL("DELETE FROM {} WHERE document_id = ANY(%s)").format(chunks)
        copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            chunks, sql.SQL(", ").join(map(sql.Identifier, _COPY_COLUMNS))
        )
        rows = [
            (
                document.document_id,
                chunk.position,
                chunk.content,
                Jsonb(chunk.metadata),
                chunk.content_hash,
                np.asarray(chunk.embedding, dtype=np.float32),
                chunk.search_text
                if chunk.search_text is not None
                else segment(_title(document), chunk.content),
            )
            for document in ordered
            for chunk in document.chunks
        ]  # segmented before the transaction opens, so it stays short
        with (
            self.database.pool.connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            cur.executemany(
                upsert,
                [
                    (d.document_id, d.content_hash, Jsonb(d.metadata), len(d.chunks))
                    for d in ordered
                ],
            )
            cur.execute(delete, ([d.document_id for d in ordered],))
            with cur.copy(copy) as writer:
                writer.set_types(_COPY_TYPES)
                for row in rows:
                    writer.write_row(row)
        return len(rows)

    # ------------------------------------------------------------------ bulk loads ------
    def begin_bulk_load(self) -> bool:
        """Drop the HNSW index when the knowledge base holds no chunks yet, so a first load
        writes rows without maintaining it (building it once afterwards is about twice as
        fast).  True when it did; :meth:`finish_bulk_load` must follow."""
        empty = sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(self.kb.chunks_table)
        with self.database.pool.connection() as conn, conn.transaction():
            row = conn.execute(empty).fetchone()
            if not (row and row[0]):
                return False
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(self.kb.vector_index))
        return True

    def finish_bulk_load(self) -> None:
        """(Re)build the HNSW index if it is missing: after a bulk load, and after a load
        that was killed before it could."""
        with self.database.pool.connection() as conn, conn.transaction():
            # CREATE INDEX locks the table even when the index exists: look in the catalog
            found = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (self.kb.vector_index_name,)
            ).fetchone()
            if found and found[0]:
                return
            conn.execute("SELECT set_config('maintenance_work_mem', '256MB', true)")
            conn.execute(vector_index_ddl(self.kb, if_not_exists=True))

    def refresh_statistics(self, chunks_changed: int) -> None:
        """Analyse the chunk table when ``chunks_changed`` is a tenth of it or more (or it
        was never analysed): the text search ranks by word frequencies from PostgreSQL's
        statistics (``retrievers/search.py``), and waiting for autovacuum would leave a
        fresh or rebuilt knowledge base without them for a while."""
        if chunks_changed <= 0:
            return
        with self.database.pool.connection() as conn:
            row = conn.execute(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                (self.kb.chunks_table_name,),
            ).fetchone()
            if row is None or row[0] < 0 or chunks_changed >= 0.1 * row[0]:
                conn.execute(sql.SQL("ANALYZE {}").format(self.kb.chunks_table))

    def delete_document(self, document_id: str) -> bool:
        """Delete a document and its chunks; False when it was not stored."""
        query = sql.SQL("DELETE FROM {} WHERE document_id = %s").format(self.kb.documents_table)
        with self.database.pool.connection() as conn:
            return conn.execute(query, (document_id,)).rowcount > 0

    def documents(self, *, limit: int = 50, offset: int = 0) -> list[DocumentInfo]:
        """Stored documents, most recently ingested first."""
        query = sql.SQL(
            "SELECT document_id, content_hash, metadata, chunk_count, ingested_at FROM {}"
            " ORDER BY ingested_at DESC, document_id LIMIT %s OFFSET %s"
        ).format(self.kb.documents_table)
        with self.database.pool.connection() as conn:
            rows = conn.execute(query, (limit, offset)).fetchall()
        return [DocumentInfo(*row) for row in rows]


def _document_id(document: DocumentRecord) -> str:
    return document.document_id


def _title(document: DocumentRecord) -> str | None:
    """The title is indexed with every chunk: news chunks rarely repeat their headline."""
    title = document.metadata.get("title")
    return str(title) if title else None
