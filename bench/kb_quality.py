"""Retrieval quality on the labelled Chinese news set, per embedding model and search type.

The corpus (``bench/data/zh_news_eval/``: 200 news items written for this project, 200
questions each labelled with the items that answer it) is ingested through the real pipeline
(default chunking) into one knowledge base per packaged embedding model.  Every question is
asked with vector-only, full-text-only and hybrid search; chunks are mapped to their
documents (first occurrence wins) and scored:

- **recall@5**: the share of a question's relevant documents among the first 5 documents;
- **MRR@10**: 1 / rank of the first relevant document within the first 10 (0 if none).

Also per model: embedding throughput while ingesting (chunks/s) and query embedding latency.
Full-text search does not depend on the model; it is reported once per model anyway as a
check that the two knowledge bases hold the same chunks.

    .venv/bin/python bench/kb_quality.py [--models multilingual-e5-small use-multilingual-v3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fengchao_chains.db import Database  # noqa: E402
from fengchao_chains.embeddings import get_embeddings  # noqa: E402
from fengchao_chains.ingest.run import ingest  # noqa: E402
from fengchao_chains.retrievers import KnowledgeBaseRegistry, get_retriever  # noqa: E402
from fengchao_chains.retrievers.search import SearchType  # noqa: E402
from fengchao_chains.settings import Settings  # noqa: E402

DATA = ROOT / "bench" / "data" / "zh_news_eval"
SEARCH_TYPES: tuple[SearchType, ...] = ("vector", "text", "hybrid")


def documents_in_order(chunks: list[Any]) -> list[str]:
    return list(dict.fromkeys(chunk.metadata["document_id"] for chunk in chunks))


def score(ranked: list[str], relevant: set[str]) -> tuple[float, float]:
    recall = len(set(ranked[:5]) & relevant) / len(relevant)
    mrr = next((1 / rank for rank, d in enumerate(ranked[:10], 1) if d in relevant), 0.0)
    return recall, mrr


def evaluate(database: Database, model: str, queries: list[dict[str, Any]]) -> dict[str, Any]:
    embeddings = get_embeddings(model)
    kb_id = "eval_" + model.replace("-", "_")[:30]
    kb = KnowledgeBaseRegistry(database).create(
        kb_id,
        embedding_model=model,
        dims=embeddings.dimensions,
    )
    started = time.perf_counter()
    report = ingest(
        [DATA / "corpus.jsonl"], database=database, knowledge_base=kb, embeddings=embeddings
    )
    ingest_seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "model": model,
        "chunks": report.chunks_written,
        "embed_chunks_per_s": report.chunks_embedded / max(report.stage_seconds["embed"], 1e-9),
        "ingest_seconds": ingest_seconds,
    }
    started = time.perf_counter()
    for query in queries[:50]:
        embeddings.embed_query(query["query"])
    result["query_embed_ms"] = (time.perf_counter() - started) / 50 * 1000
    for search_type in SEARCH_TYPES:
        retriever = get_retriever(
            kb_id, database=database, embeddings=embeddings, top_k=30, search_type=search_type
        )
        by_kind: dict[str, list[tuple[float, float]]] = {}
        for query in queries:
            ranked = documents_in_order(retriever.invoke(query["query"]))
            pair = score(ranked, set(query["relevant"]))
            by_kind.setdefault("all", []).append(pair)
            by_kind.setdefault(query["kind"], []).append(pair)
        result[search_type] = {
            kind: (statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs))
            for kind, pairs in by_kind.items()
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["multilingual-e5-small", "use-multilingual-v3"]
    )
    args = parser.parse_args()
    queries = [json.loads(line) for line in (DATA / "queries.jsonl").open(encoding="utf-8")]
    with tempfile.TemporaryDirectory(prefix="fengchao-bench-") as tmp:
        database = Database.start(Settings(data_dir=Path(tmp), database_schema="bench"))
        try:
            results = [evaluate(database, model, queries) for model in args.models]
        finally:
            database.close()
    kinds = ["all", *sorted({q["kind"] for q in queries})]
    print(f"\n{len(queries)} questions over {DATA.name} (recall@5 / MRR@10)")
    print(f"{'model':24} {'search':7} " + " ".join(f"{kind:>15}" for kind in kinds))
    for result in results:
        for search_type in SEARCH_TYPES:
            cells = [
                "{:.3f} / {:.3f}".format(*result[search_type].get(kind, (0, 0))) for kind in kinds
            ]
            print(f"{result['model']:24} {search_type:7} " + " ".join(f"{c:>15}" for c in cells))
    print(f"\n{'model':24} {'chunks':>7} {'embed chunks/s':>15} {'query embed':>12}")
    for result in results:
        print(
            f"{result['model']:24} {result['chunks']:7d} {result['embed_chunks_per_s']:15.1f}"
            f" {result['query_embed_ms']:10.1f}ms"
        )
    for result in results:
        (hybrid_recall, hybrid_mrr) = result["hybrid"]["all"]
        (vector_recall, vector_mrr) = result["vector"]["all"]
        print(
            f"{result['model']}: hybrid / vector-only: recall@5"
            f" {hybrid_recall / max(vector_recall, 1e-9):.2f}x, MRR@10"
            f" {hybrid_mrr / max(vector_mrr, 1e-9):.2f}x"
        )


if __name__ == "__main__":
    main()
