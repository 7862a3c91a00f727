"""Knowledge-base query latency and recall at 100k chunks: the retriever vs its bare SQL.

A knowledge base of ``--chunks`` generated chunks (384-dimensional vectors around 2,000
topic centres, and Chinese text drawn from jieba's dictionary: each chunk mixes its topic's
words with common words) is loaded through ``ChunkStore.write`` (COPY), then its HNSW index
is built.  Queries are points near a topic centre with three of that topic's words.

Measured, one run, same queries, alternating A/B call by call:

- **recall@10** of the vector search against exact search (a sequential scan);
- **latency p50/p99** of ``PGVectorRetriever.invoke`` (vector-only and hybrid), with the
  query's embedding precomputed so the figure is the search, not the embedding model;
- the same statements run bare on a pooled psycopg connection: the retriever's overhead.

Targets (the issue): vector p50 <= 5 ms with recall@10 >= 0.95, hybrid p50 <= 15 ms,
retriever overhead over the bare SQL <= 10%.

    .venv/bin/python bench/kb_query.py [--chunks 100000] [--queries 300]
    (embedded Postgres in a temporary directory, or FENGCHAO_DATABASE_URL)
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_core.embeddings import Embeddings  # noqa: E402
from psycopg import sql  # noqa: E402

from bench._corpus import vocabulary  # noqa: E402
from fengchao_chains.db import Database  # noqa: E402
from fengchao_chains.retrievers import (  # noqa: E402
    ChunkRecord,
    ChunkStore,
    DocumentRecord,
    KnowledgeBase,
    KnowledgeBaseRegistry,
    PGVectorRetriever,
)
from fengchao_chains.retrievers.search import SearchPlan, SearchType, run_search  # noqa: E402
from fengchao_chains.settings import Settings  # noqa: E402

DIMS = 384
TOPICS = 2000
TOP_K = 10
VECTOR_P50_MS, HYBRID_P50_MS, RECALL, OVERHEAD = 5.0, 15.0, 0.95, 0.10


class Precomputed(Embeddings):
    """Query vectors computed before timing starts: the benchmark measures the search."""

    model = "bench-generated"

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError("the benchmark only queries")

    def embed_query(self, text: str) -> list[float]:
        return self.vectors[text]  # type: ignore[return-value]  # an array; the plan takes it


def generate(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str], Any]:
    words = vocabulary(6000)
    common, topical = words[:1000], words[1000:]
    centres = rng.normal(size=(TOPICS, DIMS)).astype(np.float32)
    topic_words = [rng.choice(topical, size=12, replace=False) for _ in range(TOPICS)]
    topic_of = rng.integers(0, TOPICS, size=n)
    vectors = centres[topic_of] + rng.normal(scale=0.9, size=(n, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = []
    for topic in topic_of:
        mix = [*rng.choice(topic_words[topic], 8), *rng.choice(common, 22)]
        rng.shuffle(mix)
        texts.append("".join(mix) + "。")
    return vectors, texts, (centres, topic_words)


def load(database: Database, n: int, rng: np.random.Generator) -> tuple[KnowledgeBase, Any]:
    registry = KnowledgeBaseRegistry(database)
    vectors, texts, topics = generate(n, rng)  # the same data for the same seed and size
    if "bench_query" in {kb.id for kb in registry.all()}:
        kb = registry.get("bench_query")
        if registry.stats(kb)["chunks"] == n:
            print(f"  reusing the loaded {n:,} chunks", file=sys.stderr)
            return kb, topics
        registry.drop("bench_query")
    kb = registry.create("bench_query", embedding_model="bench-generated", dims=DIMS)
    with database.pool.connection() as conn:  # bulk load first, build the index after
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(f"kb_{kb.id}_hnsw")))
    store = ChunkStore(database, kb)
    started = time.perf_counter()
    for start in range(0, n, 5000):
        batch = []
        for i in range(start, min(start + 5000, n)):
            digest = hashlib.sha256(texts[i].encode()).hexdigest()
            metadata = {"title": f"第{i}条", "source": f"source-{i % 7}"}
            chunk = ChunkRecord(0, texts[i], metadata, digest, vectors[i])
            batch.append(DocumentRecord(f"doc-{i}", digest, metadata, [chunk]))
        store.write(batch)
        print(f"\r  loaded {min(start + 5000, n):,}/{n:,}", end="", file=sys.stderr)
    print(f"\n  load (COPY, jieba): {time.perf_counter() - started:.1f} s", file=sys.stderr)
    started = time.perf_counter()
    with database.pool.connection() as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(
            sql.SQL(
                "CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops)"
                " WITH (m = 16, ef_construction = 64)"
            ).format(sql.Identifier(f"kb_{kb.id}_hnsw"), kb.chunks_table)
        )
        conn.execute(sql.SQL("ANALYZE {}").format(kb.chunks_table))
    print(f"  HNSW build: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return kb, topics


def make_queries(count: int, topics: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    centres, topic_words = topics
    queries: dict[str, np.ndarray] = {}
    while len(queries) < count:
        topic = int(rng.integers(0, TOPICS))
        text = "".join(rng.choice(topic_words[topic], 3, replace=False))
        vector = centres[topic] + rng.normal(scale=0.9, size=DIMS).astype(np.float32)
        queries[text] = (vector / np.linalg.norm(vector)).astype(np.float32)
    return queries


def exact_top(database: Database, kb: KnowledgeBase, vector: np.ndarray) -> list[str]:
    query = sql.SQL("SELECT document_id FROM {} ORDER BY embedding <=> %s LIMIT %s").format(
        kb.chunks_table
    )
    with database.pool.connection() as conn:
        conn.execute("SET LOCAL enable_indexscan = off")
        return [row[0] for row in conn.execute(query, (vector, TOP_K)).fetchall()]


def bare_search(database: Database, plan: SearchPlan) -> Callable[[], object]:
    """The search's own statements, run directly: no LangChain, no Documents."""

    def run() -> object:
        with database.pool.connection() as conn:
            return run_search(conn, plan)

    return run


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def measure(
    database: Database,
    kb: KnowledgeBase,
    queries: dict[str, np.ndarray],
    search_type: SearchType,
) -> dict[str, Any]:
    retriever = PGVectorRetriever(
        knowledge_base=kb,
        database=database,
        embeddings=Precomputed(queries),
        top_k=TOP_K,
        search_type=search_type,
    )
    ours: list[float] = []
    bare: list[float] = []
    texts = list(queries)
    for text in texts[:30]:  # warm-up: caches, prepared plans
        retriever.invoke(text)
    for i, text in enumerate(texts):
        plan = retriever._plan(text, queries[text].tolist())
        pair: list[tuple[str, Callable[[], object]]] = [
            ("ours", partial(retriever.invoke, text)),
            ("bare", bare_search(database, plan)),
        ]
        for name, call in pair if i % 2 == 0 else pair[::-1]:
            (ours if name == "ours" else bare).append(timed(call))
    return {"ours": ours, "bare": bare, "retriever": retriever}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the embedded database here; a second run with the same --chunks reuses the"
        " loaded knowledge base (default: a temporary directory)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(20261122)
    with tempfile.TemporaryDirectory(prefix="fengchao-bench-") as tmp:
        settings = Settings(data_dir=args.data_dir or Path(tmp), database_schema="bench")
        database = Database.start(settings)
        try:
            kb, topics = load(database, args.chunks, rng)
            queries = make_queries(args.queries, topics, rng)
            truth = {text: exact_top(database, kb, v) for text, v in queries.items()}
            rows = []
            search_types: tuple[SearchType, ...] = ("vector", "hybrid")
            for search_type in search_types:
                result = measure(database, kb, queries, search_type)
                rows.append((search_type, result))
            vector = rows[0][1]["retriever"]
            recalls = [
                len({d.metadata["document_id"] for d in vector.invoke(t)} & set(truth[t])) / TOP_K
                for t in queries
            ]
        finally:
            database.close()
    recall = statistics.fmean(recalls)
    print(
        f"\n{args.chunks:,} chunks x {DIMS} dims, {len(queries)} queries, top_k {TOP_K},"
        f" ef_search {settings.knowledge_ef_search}"
    )
    print(f"recall@10 (vector vs exact): {recall:.3f}  (target >= {RECALL})")
    print(f"{'search':8} {'ours p50':>9} {'p99':>7} {'bare p50':>9} {'p99':>7} {'overhead':>9}")
    for search_type, result in rows:
        ours50, bare50 = pct(result["ours"], 50), pct(result["bare"], 50)
        print(
            f"{search_type:8} {ours50:8.2f}ms {pct(result['ours'], 99):6.2f}ms"
            f" {bare50:8.2f}ms {pct(result['bare'], 99):6.2f}ms {ours50 / bare50 - 1:+8.1%}"
        )
    vector50 = pct(rows[0][1]["ours"], 50)
    hybrid50 = pct(rows[1][1]["ours"], 50)
    print(
        f"ratios to target: vector p50 {vector50 / VECTOR_P50_MS:.2f}x of {VECTOR_P50_MS} ms,"
        f" hybrid p50 {hybrid50 / HYBRID_P50_MS:.2f}x of {HYBRID_P50_MS} ms,"
        f" recall {recall / RECALL:.3f}x of {RECALL}"
    )


if __name__ == "__main__":
    main()
