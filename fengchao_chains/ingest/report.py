"""What an ingestion tells its caller: the report at the end and progress on the way.

Kept apart from the pipeline because re-embedding reports progress the same way, and the CLI
and benchmarks only need these shapes, not the machinery that fills them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fengchao_chains.ingest.sources import SourceProblem


@dataclass
class IngestReport:
    """What a run did (or, with ``dry_run``, would do)."""

    knowledge_base: str
    dry_run: bool = False
    documents_read: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    """Items whose id came again later in the same batch (the later one is ingested)."""
    problems: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    embeddings_reused: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("load", "chunk", "embed", "write"), 0.0)
    )
    stopped: bool = False
    """True when a stop request ended the run early (every committed batch stays)."""

    @property
    def items_per_second(self) -> float:
        return self.documents_read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["seconds"] = round(self.seconds, 3)
        payload["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        payload["items_per_second"] = round(self.items_per_second, 2)
        return payload


@dataclass(frozen=True)
class Progress:
    """A progress snapshot: documents handled (written or skipped) of about ``total``."""

    done: int
    total: int | None
    chunks_written: int


ProgressCallback = Callable[[Progress], None]
ProblemCallback = Callable[[SourceProblem], None]
