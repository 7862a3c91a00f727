"""The entry point of ingestion: sources in, a report out.

:func:`ingest` reads the sources, checks them first when asked to fail on problems (stdin
is spooled so it can be read twice), and hands the entries to a :class:`Pipeline`;
:func:`validate` is that check on its own.  Kept apart from the pipeline, which knows
nothing about paths, stdin or the ``on_error`` policy.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from langchain_core.embeddings import Embeddings

from fengchao_chains.db import Database
from fengchao_chains.ingest.errors import IngestError
from fengchao_chains.ingest.pipeline import DEFAULT_BATCH_SIZE, EMBED_GROUP, Pipeline
from fengchao_chains.ingest.report import IngestReport, ProblemCallback, ProgressCallback
from fengchao_chains.ingest.sources import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    SourceItem,
    SourceProblem,
    estimate_total,
    read_source,
)
from fengchao_chains.retrievers.registry import KnowledgeBase
from fengchao_chains.settings import Settings

OnError = Literal["skip", "fail"]


def read_sources(
    sources: Sequence[str | Path], *, max_document_chars: int, glob: str | None
) -> Iterator[SourceItem | SourceProblem]:
    """Every source's entries, one source after the other (each checked when reached)."""
    return itertools.chain.from_iterable(
        read_source(source, max_document_chars=max_document_chars, glob=glob) for source in sources
    )


def estimate_sources(sources: Sequence[str | Path], *, glob: str | None) -> int | None:
    total = 0
    for source in sources:
        count = estimate_total(source, glob=glob)
        if count is None:
            return None
        total += count
    return total


def ingest(
    sources: Sequence[str | Path],
    *,
    database: Database | None,
    knowledge_base: KnowledgeBase,
    embeddings: Embeddings | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
    glob: str | None = None,
    on_error: OnError = "skip",
    dry_run: bool = False,
    on_problem: ProblemCallback | None = None,
    on_progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    embed_group: int = EMBED_GROUP,
    settings: Settings | None = None,
) -> IngestReport:
    """Ingest ``sources`` (paths, or ``"-"`` for JSONL on stdin) into ``knowledge_base``.

    ``embeddings`` defaults to the knowledge base's own model (from ``settings``' catalog).
    Problems in the source are passed to ``on_problem`` and skipped; with
    ``on_error="fail"`` the whole source is first read and checked without embedding, and
    :class:`IngestError` is raised, with nothing written, when anything is wrong.
    ``dry_run`` reads, checks and chunks, and reports what would change without embedding or
    writing.  Setting ``stop`` ends the run after the batch being written
    (``report.stopped``); ``embed_group`` texts are embedded per call, so a stop waits for
    one such call at most.
    """
    if on_error not in ("skip", "fail"):
        raise IngestError(f"on_error must be 'skip' or 'fail', not {on_error!r}")
    if embeddings is None and not dry_run:
        from fengchao_chains.embeddings import get_embeddings

        embeddings = get_embeddings(knowledge_base.embedding_model, settings)
    with ExitStack() as stack:
        if on_error == "fail":
            spooled = [stack.enter_context(_Replayable(source)) for source in sources]
            sources = [replayable.path for replayable in spooled]
            on_problem = _stdin_locations(spooled, on_problem)
        pipeline = Pipeline(
            database,
            knowledge_base,
            embeddings,
            batch_size=batch_size,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            dry_run=dry_run,
            on_problem=on_problem,
            on_progress=on_progress,
            stop=stop,
            embed_group=embed_group,
        )
        if on_error == "fail":
            problems = validate(
                sources, max_document_chars=max_document_chars, glob=glob, on_problem=on_problem
            )
            if problems:
                raise IngestError(
                    f"{problems} problem(s) in the source; nothing was written"
                    " (fix them, or ingest with --on-error skip)"
                )
            pipeline.on_problem = None
        total = estimate_sources(sources, glob=glob)
        entries = read_sources(sources, max_document_chars=max_document_chars, glob=glob)
        return pipeline.run(entries, total)
    raise AssertionError("unreachable")  # pragma: no cover - for mypy


def validate(
    sources: Sequence[str | Path],
    *,
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
    glob: str | None = None,
    on_problem: ProblemCallback | None = None,
) -> int:
    """Read every source without embedding; the number of problems found."""
    problems = 0
    for entry in read_sources(sources, max_document_chars=max_document_chars, glob=glob):
        if isinstance(entry, SourceProblem):
            problems += 1
            if on_problem is not None:
                on_problem(entry)
    return problems


class _Replayable:
    """A source that can be read twice: stdin is spooled to a temporary JSONL file (copied
    in blocks, so memory stays flat); a path is itself."""

    def __init__(self, source: str | Path) -> None:
        self.path = source
        self.temp: Path | None = None

    def __enter__(self) -> _Replayable:
        if str(self.path) == "-":
            with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as file:
                shutil.copyfileobj(getattr(sys.stdin, "buffer", sys.stdin), file)
                self.temp = self.path = Path(file.name)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


def _stdin_locations(
    spooled: Sequence[_Replayable], on_problem: ProblemCallback | None
) -> ProblemCallback | None:
    """Problems of spooled stdin located as ``<stdin>:N``, like a direct read names them."""
    temps = {str(r.temp): "<stdin>" for r in spooled if r.temp is not None}
    if on_problem is None or not temps:
        return on_problem
    report = on_problem

    def renamed(problem: SourceProblem) -> None:
        name, sep, line = problem.location.rpartition(":")
        if sep and name in temps:
            problem = SourceProblem(f"{temps[name]}:{line}", problem.reason)
        elif problem.location in temps:
            problem = SourceProblem(temps[problem.location], problem.reason)
        report(problem)

    return renamed
