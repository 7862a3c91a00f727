"""Errors of ingestion, in their own module so every ingestion stage (the pipeline, its
writer, the lock, re-embedding) can raise them without importing one another."""

from __future__ import annotations

from fengchao_chains.errors import FengchaoError


class IngestError(FengchaoError):
    """An ingestion that cannot run, or was refused because its source has problems."""
