"""What is embedded for a chunk, and the hashes that make ingestion idempotent.

The text embedded for a chunk is ``"title\\nchunk"`` when the document has a title (news
chunks rarely repeat their headline); the chunk's ``content_hash`` is the sha256 of exactly
that text, so a stored vector is reused for the same text and re-embedding rebuilds the same
text.  A document's stored fingerprint covers its content, its metadata and the chunking
settings, so re-chunking with other sizes re-ingests it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fengchao_chains.ingest.chunking import Chunker
from fengchao_chains.ingest.sources import SourceItem, content_hash


def embedding_text(title: Any, chunk: str) -> str:
    """The text embedded for a chunk: the title on its own line first, when there is one."""
    return f"{title}\n{chunk}" if title else chunk


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def document_fingerprint(item: SourceItem, chunker: Chunker) -> str:
    """What is stored as the document's content hash: its content and metadata, and the
    chunking that made its chunks."""
    payload = f"{content_hash(item)}:{chunker.chunk_size}:{chunker.chunk_overlap}"
    return text_hash(payload)
