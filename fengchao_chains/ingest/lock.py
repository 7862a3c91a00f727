"""The per-knowledge-base advisory lock that keeps ingestions and re-embeddings apart.

Ingestions share it (their batch writes do not conflict); a re-embedding takes it alone, so
no chunk embedded with the old model is written while the vectors are being replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fengchao_chains.db import Database
from fengchao_chains.ingest.errors import IngestError
from fengchao_chains.retrievers.registry import KnowledgeBase


@contextmanager
def knowledge_base_lock(database: Database, kb: KnowledgeBase, *, shared: bool) -> Iterator[None]:
    """The knowledge base's advisory lock for the block: shared by ingestions, exclusive for a
    re-embedding (which must not see new chunks embedded with the old model).  Not waited
    for: a conflict is an :class:`IngestError` at once.  A killed process releases it."""
    kind = "_shared" if shared else ""
    key = f"fengchao-kb:{database.schema}.{kb.id}"
    with database.pool.connection() as conn:
        conn.autocommit = True
        row = conn.execute(f"SELECT pg_try_advisory_lock{kind}(hashtext(%s))", (key,)).fetchone()
        if not row or not row[0]:
            doing = "ingested" if not shared else "re-embedded"
            raise IngestError(
                f"knowledge base {kb.id!r} is being {doing} by another process; try again when"
                " it has finished"
            )
        try:
            yield
        finally:
            conn.execute(f"SELECT pg_advisory_unlock{kind}(hashtext(%s))", (key,))
