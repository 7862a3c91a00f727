"""``fengchao ingest``: load documents into a knowledge base, with a progress view and a report.

Kept apart from ``cli.py`` (same conventions: ``error: ...`` on stderr, exit 1 on a reported
error, 2 on a usage error, 130 on Ctrl-C, ``--json`` where the output is data); imports are
lazy so ``--help`` stays fast.  The progress view is shared with ``cli_kb.py`` (``kb
reembed`` shows the same one).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress

    from fengchao_chains.db import Database
    from fengchao_chains.ingest.report import IngestReport, Progress
    from fengchao_chains.ingest.sources import SourceProblem
    from fengchao_chains.retrievers import KnowledgeBase
    from fengchao_chains.settings import Settings

LOG_EVERY = 10.0
"""Seconds between progress lines when stderr is not a terminal."""


class OnErrorChoice(StrEnum):
    skip = "skip"
    fail = "fail"


def ingest_command(
    sources: Annotated[
        list[str],
        typer.Argument(
            metavar="SOURCE...",
            help="JSONL/CSV files, directories of documents, or - for JSONL on stdin.",
        ),
    ],
    *,
    kb: Annotated[str, typer.Option("--kb", help="Knowledge base to load.")] = "news_vector_store",
    create: Annotated[
        bool, typer.Option("--create", help="Create the knowledge base if it does not exist.")
    ] = False,
    embedding_model: Annotated[
        str | None,
        typer.Option(help="Embedding model of a created knowledge base (default: settings)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Documents per batch (one transaction each).")
    ] = 64,
    chunk_size: Annotated[
        int | None,
        typer.Option(min=1, help="Chunk size, characters (default: the kb's)."),
    ] = None,
    chunk_overlap: Annotated[
        int | None,
        typer.Option(min=0, help="Chunk overlap, characters (default: the kb's)."),
    ] = None,
    max_document_chars: Annotated[
        int | None, typer.Option(min=1, help="Longer documents are problems (default: 1000000).")
    ] = None,
    glob: Annotated[
        str | None, typer.Option(help="Only files of a directory matching this pattern.")
    ] = None,
    on_error: Annotated[
        OnErrorChoice,
        typer.Option(help="skip: report bad input and go on; fail: check first, write nothing."),
    ] = OnErrorChoice.skip,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would change; embed and write nothing.")
    ] = False,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No progress bar or progress lines.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Load documents into a knowledge base (idempotent and resumable: run it again)."""
    from fengchao_chains.cli import guarded, open_database, settings_from
    from fengchao_chains.ingest.run import ingest
    from fengchao_chains.ingest.sources import DEFAULT_MAX_DOCUMENT_CHARS

    settings = settings_from()
    with open_database(settings) as database:
        knowledge_base, writable = guarded(
            lambda: _ingest_target(
                database,
                settings,
                kb_id=kb,
                create=create,
                embedding_model=embedding_model,
                chunk_size=chunk_size,
                chunk_overlap=chunk_overlap,
                dry_run=dry_run,
            )
        )
        with progress_view(enabled=not no_progress) as view:
            report = guarded(
                lambda: ingest(
                    sources,
                    database=database if writable else None,
                    knowledge_base=knowledge_base,
                    embeddings=None if dry_run else _embeddings(knowledge_base, settings),
                    batch_size=batch_size,
                    chunk_size=chunk_size,
                    chunk_overlap=chunk_overlap,
                    max_document_chars=max_document_chars or DEFAULT_MAX_DOCUMENT_CHARS,
                    glob=glob,
                    on_error=on_error.value,
                    dry_run=dry_run,
                    on_problem=_print_problem,
                    on_progress=view.update,
                )
            )
    _print_report(report, as_json)


def _ingest_target(
    database: Database,
    settings: Settings,
    *,
    kb_id: str,
    create: bool,
    embedding_model: str | None,
    chunk_size: int | None,
    chunk_overlap: int | None,
    dry_run: bool,
) -> tuple[KnowledgeBase, bool]:
    """The knowledge base to load, created when asked, and whether it exists in the database
    (a dry run with ``--create`` does not create it)."""
    from datetime import UTC, datetime

    from fengchao_chains.embeddings import get_embeddings
    from fengchao_chains.errors import ConfigurationError
    from fengchao_chains.retrievers import KnowledgeBase, KnowledgeBaseRegistry
    from fengchao_chains.retrievers.errors import UnknownKnowledgeBaseError
    from fengchao_chains.retrievers.registry import (
        DEFAULT_CHUNK_OVERLAP,
        DEFAULT_CHUNK_SIZE,
        NEWS_STORE,
        NEWS_STORE_DESCRIPTION,
        check_kb_id,
    )

    registry = KnowledgeBaseRegistry(database)
    try:
        existing = registry.get(kb_id)
    except UnknownKnowledgeBaseError:
        if not create:
            raise
    else:
        if embedding_model is not None and embedding_model != existing.embedding_model:
            raise ConfigurationError(
                f"knowledge base {kb_id!r} is embedded with {existing.embedding_model!r};"
                f" leave out --embedding-model, or `fengchao kb reembed {kb_id} --model"
                f" {embedding_model}` first"
            )
        return existing, True
    model = get_embeddings(embedding_model, settings)
    options: dict[str, Any] = {
        "embedding_model": model.model,
        "dims": model.dimensions,
        "chunk_size": chunk_size or DEFAULT_CHUNK_SIZE,
        "chunk_overlap": DEFAULT_CHUNK_OVERLAP if chunk_overlap is None else chunk_overlap,
    }
    description = NEWS_STORE_DESCRIPTION if kb_id == NEWS_STORE else ""
    if dry_run:
        check_kb_id(kb_id)
        return KnowledgeBase(kb_id, description, created_at=datetime.now(UTC), **options), False
    return registry.create(kb_id, description=description, **options), True


def _embeddings(kb: KnowledgeBase, settings: Settings) -> Any:
    from fengchao_chains.cli import guarded
    from fengchao_chains.embeddings import get_embeddings

    return guarded(lambda: get_embeddings(kb.embedding_model, settings))


def _print_problem(problem: SourceProblem) -> None:
    from fengchao_chains.cli import stderr

    stderr.print(f"problem: {problem.location}: {problem.reason}", markup=False)


def _print_report(report: IngestReport, as_json: bool) -> None:
    from fengchao_chains.cli import print_json, stderr

    if as_json:
        print_json(report.as_dict())
        return
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items())
    verb = "would write" if report.dry_run else "written"
    lines = [
        f"{'dry run: ' if report.dry_run else ''}{report.knowledge_base}:"
        f" {report.documents_read} documents read — {report.new} new, {report.changed} changed,"
        f" {report.unchanged} unchanged, {report.duplicates} duplicates,"
        f" {report.problems} problems",
        f"chunks: {report.chunks_written} {verb}, {report.chunks_embedded} embedded,"
        f" {report.embeddings_reused} embeddings reused",
        f"time: {report.seconds:.1f}s ({report.items_per_second:.1f} documents/s; {stages})",
    ]
    if report.stopped:
        lines.append("stopped early: run the same command again to finish")
    stderr.print("\n".join(lines), markup=False)


class ProgressView:
    """A progress bar on a terminal, a line every ``LOG_EVERY`` seconds otherwise."""

    def __init__(self, bar: RichProgress | None, enabled: bool) -> None:
        self.bar = bar
        self.enabled = enabled
        self.task: Any = None
        self.started = time.monotonic()
        self.last_line = self.started
        self.lock = threading.Lock()

    def update(self, progress: Progress) -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = progress.done / elapsed
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task("ingest", total=progress.total)
            self.bar.update(
                self.task,
                completed=progress.done,
                total=progress.total,
                rate=f"{rate:.1f} docs/s",
                chunks=progress.chunks_written,
            )
            return
        with self.lock:
            now = time.monotonic()
            if now - self.last_line < LOG_EVERY:
                return
            self.last_line = now
        from fengchao_chains.cli import stderr

        of = f"/{progress.total}" if progress.total is not None else ""
        stderr.print(
            f"ingest: {progress.done}{of} documents, {progress.chunks_written} chunks written,"
            f" {rate:.1f} documents/s",
            markup=False,
        )


@contextmanager
def progress_view(*, enabled: bool) -> Iterator[ProgressView]:
    from fengchao_chains.cli import stderr

    if not enabled or not sys.stderr.isatty():
        yield ProgressView(None, enabled)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[chunks]} chunks"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr,
    )
    with bar:
        yield ProgressView(bar, enabled)
