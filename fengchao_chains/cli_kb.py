"""``fengchao kb ...``: list, create, delete, inspect, search and re-embed knowledge bases.

Kept apart from ``cli.py`` (same conventions: ``error: ...`` on stderr, exit 1 on a reported
error, 2 on a usage error, 130 on Ctrl-C, ``--json`` where the output is data); imports are
lazy so ``--help`` stays fast.  Loading documents is ``fengchao ingest``, in ``cli_ingest.py``,
whose database, JSON and progress helpers these commands reuse.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fengchao_chains.cli_ingest import progress_view

if TYPE_CHECKING:
    from fengchao_chains.db import Database
    from fengchao_chains.retrievers import KnowledgeBase

kb_app = typer.Typer(
    help="Knowledge bases: list, create, delete, inspect, search and re-embed.",
    no_args_is_help=True,
)


class SearchTypeChoice(StrEnum):
    hybrid = "hybrid"
    vector = "vector"
    text = "text"


def _get_kb(database: Database, kb_id: str) -> KnowledgeBase:
    from fengchao_chains.cli import guarded
    from fengchao_chains.retrievers import KnowledgeBaseRegistry

    return guarded(lambda: KnowledgeBaseRegistry(database).get(kb_id))


@kb_app.command("list")
def list_kbs(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List knowledge bases: id, description, model, dimensions, documents, chunks, created."""
    from rich.table import Table

    from fengchao_chains.cli import guarded, open_database, print_json, settings_from, stdout
    from fengchao_chains.retrievers import KnowledgeBaseRegistry

    settings = settings_from()
    with open_database(settings) as database:
        registry = KnowledgeBaseRegistry(database)
        rows = [
            _kb_payload(kb, guarded(lambda kb=kb: registry.stats(kb)))  # type: ignore[misc]
            for kb in guarded(registry.all)
        ]
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} knowledge bases")
    for column in ("id", "description", "model", "dims", "documents", "chunks", "created"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("id", "description", "embedding_model", "dims")),
                      str(row["documents"]), str(row["chunks"]), row["created"])  # fmt: skip
    stdout.print(table)


def _kb_payload(kb: KnowledgeBase, stats: dict[str, Any]) -> dict[str, Any]:
    last = stats.get("last_ingested_at")
    return {
        "id": kb.id,
        "description": kb.description,
        "embedding_model": kb.embedding_model,
        "dims": kb.dims,
        "chunk_size": kb.chunk_size,
        "chunk_overlap": kb.chunk_overlap,
        "documents": stats["documents"],
        "chunks": stats["chunks"],
        "created": kb.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "last_ingested_at": last.isoformat() if last else None,
    }


@kb_app.command("create")
def create_kb(
    kb_id: Annotated[str, typer.Argument(metavar="ID", help="New id: a-z, 0-9 and _.")],
    description: Annotated[str, typer.Option(help="What the knowledge base holds.")] = "",
    embedding_model: Annotated[
        str | None,
        typer.Option(help="Embedding model id (default: settings)."),
    ] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Chunk size in characters.")] = 400,
    chunk_overlap: Annotated[int, typer.Option(min=0, help="Chunk overlap in characters.")] = 60,
) -> None:
    """Create an empty knowledge base."""
    from fengchao_chains.cli import guarded, open_database, settings_from, stdout
    from fengchao_chains.embeddings import get_embeddings
    from fengchao_chains.retrievers import KnowledgeBaseRegistry

    settings = settings_from()
    model = guarded(lambda: get_embeddings(embedding_model, settings))
    with open_database(settings) as database:
        kb = guarded(
            lambda: KnowledgeBaseRegistry(database).create(
                kb_id,
                description=description,
                embedding_model=model.model,
                dims=model.dimensions,
                chunk_size=chunk_size,
                chunk_overlap=chunk_overlap,
            )
        )
    stdout.print(
        f"created {kb.id} ({kb.embedding_model}, {kb.dims} dimensions, chunks of"
        f" {kb.chunk_size}/{kb.chunk_overlap})",
        markup=False,
    )


@kb_app.command("delete")
def delete_kb(
    kb_id: Annotated[str, typer.Argument(metavar="ID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a knowledge base with all its documents and chunks."""
    from fengchao_chains.cli import (
        guarded,
        open_database,
        settings_from,
        stderr,
        stdout,
    )
    from fengchao_chains.retrievers import KnowledgeBaseRegistry

    settings = settings_from()
    with open_database(settings) as database:
        registry = KnowledgeBaseRegistry(database)
        kb = _get_kb(database, kb_id)
        stats = guarded(lambda: registry.stats(kb))
        if not yes:
            if not sys.stdin.isatty():
                stderr.print(f"error: pass --yes to delete {kb_id} without a terminal")
                raise typer.Exit(1)
            question = (
                f"Delete {kb_id} with {stats['documents']} documents, {stats['chunks']} chunks?"
            )
            if not typer.confirm(question):
                raise typer.Exit(1)
        guarded(lambda: registry.drop(kb_id))
    stdout.print(f"deleted {kb_id}", markup=False)


@kb_app.command("documents")
def list_documents(
    kb_id: Annotated[str, typer.Argument(metavar="ID")],
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List stored documents, most recently ingested first."""
    from rich.table import Table

    from fengchao_chains.cli import guarded, open_database, print_json, settings_from, stdout
    from fengchao_chains.retrievers import ChunkStore

    settings = settings_from()
    with open_database(settings) as database:
        store = ChunkStore(database, _get_kb(database, kb_id))
        documents = guarded(lambda: store.documents(limit=limit, offset=offset))
    rows = [
        {
            "document_id": d.document_id,
            "title": d.metadata.get("title"),
            "url": d.metadata.get("url"),
            "published_at": d.metadata.get("published_at"),
            "chunks": d.chunk_count,
            "content_hash": d.content_hash,
            "ingested_at": d.ingested_at.isoformat(),
            "metadata": d.metadata,
        }
        for d in documents
    ]
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{kb_id}: documents {offset + 1}-{offset + len(rows)}")
    for column in ("document_id", "title", "published_at", "chunks", "ingested_at"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c] or "") for c in ("document_id", "title", "published_at")),
                      str(row["chunks"]), str(row["ingested_at"])[:19])  # fmt: skip
    stdout.print(table)


@kb_app.command("delete-document")
def delete_document(
    kb_id: Annotated[str, typer.Argument(metavar="ID")],
    document_id: Annotated[str, typer.Argument(metavar="DOCUMENT_ID")],
) -> None:
    """Delete one document and its chunks."""
    from fengchao_chains.cli import (
        guarded,
        open_database,
        settings_from,
        stderr,
        stdout,
    )
    from fengchao_chains.retrievers import ChunkStore

    settings = settings_from()
    with open_database(settings) as database:
        store = ChunkStore(database, _get_kb(database, kb_id))
        deleted = guarded(lambda: store.delete_document(document_id))
    if not deleted:
        stderr.print(f"error: no document {document_id!r} in {kb_id}", markup=False)
        raise typer.Exit(1)
    stdout.print(f"deleted {document_id} from {kb_id}", markup=False)


@kb_app.command("search")
def search(
    kb_id: Annotated[str, typer.Argument(metavar="ID")],
    query: Annotated[str, typer.Argument(metavar="QUERY")],
    *,
    top_k: Annotated[int, typer.Option(min=1, max=1000)] = 5,
    threshold: Annotated[
        float | None,
        typer.Option(help="fengchao scale: cosine distance x 1000 (0 off; smaller is stricter)."),
    ] = None,
    min_similarity: Annotated[
        float | None, typer.Option(help="Minimum cosine similarity (-1 to 1).")
    ] = None,
    filter_json: Annotated[
        str | None,
        typer.Option("--filter", help='Metadata filter as JSON, e.g. {"source": "新华社"}.'),
    ] = None,
    search_type: Annotated[SearchTypeChoice, typer.Option()] = SearchTypeChoice.hybrid,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Search a knowledge base: chunks with similarity, distance, fused score, title, url."""
    from fengchao_chains.cli import guarded, open_database, print_json, settings_from, stdout
    from fengchao_chains.retrievers import get_retriever

    if threshold is not None and min_similarity is not None:
        raise typer.BadParameter("give --threshold or --min-similarity, not both")
    where = None
    if filter_json is not None:
        try:
            where = json.loads(filter_json)
        except ValueError:
            raise typer.BadParameter("not valid JSON", param_hint="--filter") from None
        if not isinstance(where, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--filter")
    settings = settings_from()
    with open_database(settings) as database:
        retriever = guarded(
            lambda: get_retriever(
                kb_id,
                top_k=top_k,
                threshold=threshold,
                score_threshold=min_similarity,
                filter=where,
                search_type=search_type.value,
                database=database,
                settings=settings,
            )
        )
        documents = guarded(lambda: retriever.invoke(query))
    hits = [
        {
            "rank": rank,
            "similarity": d.metadata.get("similarity"),
            "distance": d.metadata.get("distance"),
            "fused_score": d.metadata.get("fused_score"),
            "title": d.metadata.get("title"),
            "url": d.metadata.get("url"),
            "document_id": d.metadata.get("document_id"),
            "position": d.metadata.get("position"),
            "content": d.page_content,
            "metadata": d.metadata,
        }
        for rank, d in enumerate(documents, start=1)
    ]
    if as_json:
        print_json(hits)
        return
    if not hits:
        stdout.print("no matching chunks", markup=False)
    for hit in hits:
        fused = f" fused {hit['fused_score']:.4f}" if hit["fused_score"] is not None else ""
        stdout.print(
            f"{hit['rank']}. similarity {hit['similarity']:.3f} distance {hit['distance']:.3f}"
            f"{fused}  {hit['title'] or ''}  {hit['url'] or ''}\n"
            f"   [{hit['document_id']}#{hit['position']}] {hit['content']}\n",
            markup=False,
            highlight=False,
        )


@kb_app.command("reembed")
def reembed_command(
    kb_id: Annotated[str, typer.Argument(metavar="ID")],
    model: Annotated[str, typer.Option("--model", help="The new embedding model id.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Chunks per batch.")] = 256,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Re-embed every chunk with another model, in a table built beside the live one, then
    swap (searches keep working meanwhile; a killed run leaves the old table serving)."""
    from fengchao_chains.cli import guarded, open_database, settings_from, stdout
    from fengchao_chains.embeddings import get_embeddings
    from fengchao_chains.ingest.reembed import reembed

    settings = settings_from()
    embeddings = guarded(lambda: get_embeddings(model, settings))
    with open_database(settings) as database, progress_view(enabled=not no_progress) as view:
        kb = _get_kb(database, kb_id)
        result = guarded(
            lambda: reembed(
                database, kb, embeddings, batch_size=batch_size, on_progress=view.update
            )
        )
    stdout.print(
        f"re-embedded {result.chunks} chunks of {kb_id} with {result.model}"
        f" ({result.dims} dimensions; {result.embedded} embedded) in {result.seconds:.1f}s",
        markup=False,
    )
