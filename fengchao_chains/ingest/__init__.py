"""Ingestion: read documents from a news dump or a folder (:mod:`.sources`), split them into
sentence-aligned chunks (:mod:`.chunking`); the pipeline embeds and writes them."""

from fengchao_chains.ingest.chunking import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    Chunk,
    Chunker,
)
from fengchao_chains.ingest.sources import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    SourceEntry,
    SourceError,
    SourceItem,
    SourceProblem,
    content_hash,
    estimate_total,
    read_source,
)

__all__ = [
    "DEFAULT_CHUNK_OVERLAP",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_DOCUMENT_CHARS",
    "Chunk",
    "Chunker",
    "SourceEntry",
    "SourceError",
    "SourceItem",
    "SourceProblem",
    "content_hash",
    "estimate_total",
    "read_source",
]
