"""Re-embedding a knowledge base with another embedding model, without downtime.

Every chunk is embedded again into a new chunk table built beside the live one
(``kb_<id>_chunks_next``: same columns, constraints and indexes, the new vector size), in
batches that commit one by one; searches keep reading the live table meanwhile.  Then, in
ONE transaction, the live table is dropped, the new one takes its name (and its indexes the
old names), and the registry row gets the new model and dimensions.  A killed run leaves the
live table serving, untouched; the next run drops the half-built table and starts over.

An ingestion of the same knowledge base cannot run meanwhile (it would embed with the old
model): both take the knowledge base's advisory lock, ingestions shared, this exclusive.  A
document deleted meanwhile goes from both tables (the new table's foreign key cascades too).
After the swap the table is analysed, so the text search has its word statistics at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from psycopg import sql
from psycopg.types.json import Jsonb

from fengchao_chains.db import Database
from fengchao_chains.ingest.errors import IngestError
from fengchao_chains.ingest.hashing import embedding_text
from fengchao_chains.ingest.lock import knowledge_base_lock
from fengchao_chains.ingest.report import Progress, ProgressCallback
from fengchao_chains.retrievers.registry import KnowledgeBase, KnowledgeBaseRegistry
from fengchao_chains.retrievers.store import ChunkStore

DEFAULT_REEMBED_BATCH = 256
_COLUMNS = ("document_id", "position", "content", "metadata", "content_hash", "embedding",
            "search_text")  # fmt: skip
_TYPES = ["text", "int4", "text", "jsonb", "text", "vector", "text"]


@dataclass(frozen=True)
class ReembedResult:
    model: str
    dims: int
    chunks: int
    embedded: int
    """Distinct chunk texts embedded (repeated texts share one vector)."""
    seconds: float


def next_table(kb: KnowledgeBase) -> sql.Identifier:
    return sql.Identifier(f"kb_{kb.id}_chunks_next")


def reembed(
    database: Database,
    kb: KnowledgeBase,
    embeddings: Embeddings,
    *,
    batch_size: int = DEFAULT_REEMBED_BATCH,
    on_progress: ProgressCallback | None = None,
) -> ReembedResult:
    """Re-embed every chunk of ``kb`` with ``embeddings`` (which must carry ``.model`` and
    ``.dimensions``) and switch the knowledge base to that model."""
    model = getattr(embeddings, "model", None)
    dims = getattr(embeddings, "dimensions", None)
    if not isinstance(model, str) or not isinstance(dims, int):
        raise IngestError("re-embedding needs the project's embeddings (with .model, .dimensions)")
    started = time.perf_counter()
    with knowledge_base_lock(database, kb, shared=False):
        _build_next_table(database, kb, dims)
        total, embedded = _fill(database, kb, embeddings, batch_size, on_progress)
        _swap(database, kb, model, dims)
        ChunkStore(database, kb).refresh_statistics(total)  # every chunk is new
    return ReembedResult(model, dims, total, embedded, time.perf_counter() - started)


def _build_next_table(database: Database, kb: KnowledgeBase, dims: int) -> None:
    """An empty copy of the chunk table (columns, identity, generated column, indexes and
    the foreign key to the documents) for vectors of ``dims``."""
    chunks, new = kb.chunks_table, next_table(kb)
    with database.pool.connection() as conn, conn.transaction():
        fkey = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
            (chunks.as_string(conn),),
        ).fetchone()
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(new))  # a killed run's
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(new, chunks))
        if dims != kb.dims:
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN embedding TYPE vector({})").format(
                    new, sql.Literal(dims)
                )
            )
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY (document_id) REFERENCES {}"
                " ON DELETE CASCADE"
            ).format(
                new,
                sql.Identifier(fkey[0] if fkey else f"kb_{kb.id}_chunks_document_id_fkey"),
                kb.documents_table,
            )
        )


def _fill(
    database: Database,
    kb: KnowledgeBase,
    embeddings: Embeddings,
    batch_size: int,
    on_progress: ProgressCallback | None,
) -> tuple[int, int]:
    """Copy every chunk into the new table with a new vector, a batch per transaction."""
    chunks, new = kb.chunks_table, next_table(kb)
    read = sql.SQL(
        "SELECT id, document_id, position, content, metadata, content_hash, search_text"
        " FROM {} WHERE id > %s ORDER BY id LIMIT %s"
    ).format(chunks)
    copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        new, sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
    )
    keep_documents = sql.SQL(
        "SELECT document_id FROM {} WHERE document_id = ANY(%s) FOR KEY SHARE"
    ).format(kb.documents_table)
    with database.pool.connection() as conn:
        total = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(chunks)).fetchone()
    expected = int(total[0]) if total else 0
    last_id, done, embedded = 0, 0, 0
    vectors: dict[str, Any] = {}  # this batch's, by chunk hash
    while True:
        with database.pool.connection() as conn:
            rows = conn.execute(read, (last_id, batch_size)).fetchall()
        if not rows:
            break
        last_id = rows[-1][0]
        texts = {
            row[5]: embedding_text(row[4].get("title"), row[3]) for row in rows
        }  # content_hash -> embedded text
        vectors = dict(zip(texts, embeddings.embed_documents(list(texts.values())), strict=True))
        embedded += len(texts)
        with database.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            alive = {
                r[0] for r in cur.execute(keep_documents, (list({r[1] for r in rows}),))
            }  # and locked: a document deleted meanwhile is not copied
            with cur.copy(copy) as writer:
                writer.set_types(_TYPES)
                for _, document_id, position, content, metadata, digest, search in rows:
                    if document_id in alive:
                        vector = np.asarray(vectors[digest], dtype=np.float32)
                        writer.write_row(
                            (document_id, position, content, Jsonb(metadata), digest, vector,
                             search)
                        )  # fmt: skip
        done += len(rows)
        if on_progress is not None:
            on_progress(Progress(done, expected, done))
    return done, embedded


def _index_key(definition: str) -> str:
    """An index definition without its own and its table's names, to pair old and new."""
    kind = definition.split(" INDEX ", 1)[0]
    return f"{kind} USING {definition.split(' USING ', 1)[1]}"


def _swap(database: Database, kb: KnowledgeBase, model: str, dims: int) -> None:
    """In one transaction: the new table replaces the live one under its name, with the old
    index and sequence names, and the registry records the new model."""
    chunks, new = kb.chunks_table, next_table(kb)
    indexes = (
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass"
    )
    count = sql.SQL("SELECT (SELECT count(*) FROM {}) - (SELECT count(*) FROM {})")
    with database.pool.connection() as conn, conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(chunks))
        difference = conn.execute(count.format(chunks, new)).fetchone()
        if difference is None or difference[0] != 0:
            raise IngestError(
                f"knowledge base {kb.id!r} changed during the re-embedding; nothing was"
                " switched: run it again"
            )
        old_names = {
            _index_key(d): name
            for name, d in conn.execute(indexes, (chunks.as_string(conn),)).fetchall()
        }
        new_names = conn.execute(indexes, (new.as_string(conn),)).fetchall()
        sequence = conn.execute(
            "SELECT pg_get_serial_sequence(%s, 'id')", (chunks.as_string(conn),)
        ).fetchone()
        new_sequence = conn.execute(
            "SELECT pg_get_serial_sequence(%s, 'id')", (new.as_string(conn),)
        ).fetchone()
        conn.execute(sql.SQL("DROP TABLE {}").format(chunks))
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, chunks))
        for name, definition in new_names:
            old = old_names.get(_index_key(definition))
            if old is not None:
                conn.execute(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(name), sql.Identifier(old)
                    )
                )
        if sequence and sequence[0] and new_sequence and new_sequence[0]:
            old_sequence_name = sequence[0].rsplit(".", 1)[-1].strip('"')
            conn.execute(
                sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
                    sql.SQL(new_sequence[0]), sql.Identifier(old_sequence_name)
                )
            )
        KnowledgeBaseRegistry.record_embedding(conn, kb.id, model=model, dims=dims)
