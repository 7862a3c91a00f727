"""Knowledge-base ingestion throughput: ``ingest()`` vs LlamaIndex and langchain-postgres.

One generated news corpus (JSONL: id, title, url, published_at, source and 300-900
characters of Chinese made of jieba dictionary words with sentence punctuation; fixed seed),
one embedded Postgres (or FENGCHAO_DATABASE_URL), one embeddings object, three contenders in
turn, each into its own fresh table with an HNSW index (m 16, ef_construction 64, cosine)
that exists while rows go in:

1. **ours**: ``ingest([corpus], database=..., knowledge_base=kb, embeddings=E)``;
2. **llamaindex**: ``IngestionPipeline([LangchainNodeParser(splitter), E as a
   BaseEmbedding], vector_store=PGVectorStore.from_params(..., hnsw_kwargs=...))``, run per
   batch of documents;
3. **langchain**: langchain-postgres v2 ``PGVectorStore.create_sync`` on a table made by
   ``PGEngine.init_vectorstore_table`` (+ ``apply_vector_index(HNSWIndex())``), chunks from
   the splitter, ``add_documents`` per batch of documents.

Everyone gets the same chunks: the splitter is a ``RecursiveCharacterTextSplitter`` with our
chunker's separators and size/overlap (400/60 characters).  Everyone calls the same
embeddings object (wrapped to count the texts, characters and seconds it embeds) in batches
of 32.  Each contender reads the JSONL itself; its seconds are end to end.  What each one
embeds differs a little: ours ``title\\nchunk``, LlamaIndex ``title: ...\\n\\nchunk`` (the
other metadata keys excluded from embedding), langchain the chunk alone; the characters
embedded are printed.  Ours also segments every chunk with jieba and keeps a tsvector + GIN
index for hybrid search, which the other two do not.

Then each contender runs again on the same input (a new pipeline object, as a second process
would): ours skips every unchanged document; the others add everything again (their rows
double); their times are printed with the row counts.

Target (the issue): ours >= 2x the faster of the two in documents/s.  With a real model the
embedding dominates everyone's time; ``--model hash`` (a deterministic hashing "embedding"
costing microseconds) shows the pipelines' own overhead.

    .venv/bin/python bench/kb_ingest.py [--docs 2000] [--model use-multilingual-v3|
        multilingual-e5-small|hash] [--corpus PATH] [--batch 64]
    (embedded Postgres in a temporary directory, or FENGCHAO_DATABASE_URL)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_core.documents import Document as LCDocument  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_text_splitters import RecursiveCharacterTextSplitter  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402
from sqlalchemy.engine import URL  # noqa: E402

from bench._corpus import vocabulary  # noqa: E402
from fengchao_chains.db import Database  # noqa: E402
from fengchao_chains.ingest.chunking import SEPARATORS  # noqa: E402
from fengchao_chains.ingest.report import IngestReport  # noqa: E402
from fengchao_chains.ingest.run import ingest  # noqa: E402
from fengchao_chains.retrievers import KnowledgeBaseRegistry  # noqa: E402
from fengchao_chains.settings import Settings  # noqa: E402

CHUNK_SIZE, CHUNK_OVERLAP = 400, 60
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64
EMBED_BATCH = 32
TARGET = 2.0
KB_ID = "bench_ingest"
SCHEMAS = {"llamaindex": "bench_llamaindex", "langchain": "bench_langchain"}
TABLE = "news"


# ------------------------------------------------------------------------------ corpus ---
def chinese_text(rng: np.random.Generator, words: list[str], length: int) -> str:
    """About ``length`` characters of sentences of dictionary words (clauses with ，, ends
    with 。！？), paragraphs now and then."""
    parts: list[str] = []
    size = 0
    while size < length:
        sentence = []
        for clause in range(int(rng.integers(1, 4))):
            if clause:
                sentence.append("，")
            sentence.extend(rng.choice(words, int(rng.integers(3, 9))))
        sentence.append(str(rng.choice(["。", "。", "。", "！", "？"])))
        text = "".join(sentence)
        if parts and rng.random() < 0.08:
            text = "\n\n" + text
        parts.append(text)
        size += len(text)
    return "".join(parts)


def news_record(i: int, rng: np.random.Generator, words: list[str], lo: int, hi: int) -> str:
    record = {
        "id": f"news-{i:07d}",
        "title": "".join(rng.choice(words, int(rng.integers(3, 7)))),
        "url": f"https://news.example.cn/{i // 1000}/{i:07d}.html",
        "published_at": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T08:{i % 60:02d}:00+08:00",
        "source": f"来源{i % 9}",
        "content": chinese_text(rng, words, int(rng.integers(lo, hi + 1))),
    }
    return json.dumps(record, ensure_ascii=False)


def write_corpus(
    path: Path, docs: int, length: tuple[int, int] = (300, 900), seed: int = 20261122
) -> None:
    """``docs`` news items of ``length`` characters (a range), one JSON object a line."""
    rng = np.random.default_rng(seed)
    words = vocabulary(8000)
    with path.open("w", encoding="utf-8") as file:
        for i in range(docs):
            file.write(news_record(i, rng, words, *length) + "\n")


def length_range(text: str) -> tuple[int, int]:
    """``300-900`` as ``(300, 900)``, for ``--length``."""
    lo, _, hi = text.partition("-")
    try:
        bounds = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI characters, got {text!r}") from None
    if not 0 < bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI, got {text!r}")
    return bounds


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as file:
        for line in file:
            if line.strip():
                yield json.loads(line)


def batched(records: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -------------------------------------------------------------------------- embeddings ---
class HashEmbeddings(Embeddings):
    """A deterministic stand-in costing microseconds per text: vectors seeded from the
    text's hash.  Only for seeing the pipelines' own overhead; meaningless for search."""

    model = "bench-hash"
    dimensions = 512

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        vector = np.random.default_rng(seed).standard_normal(self.dimensions)
        return (vector / np.linalg.norm(vector)).tolist()  # type: ignore[no-any-return]


@dataclass
class EmbedCounter:
    calls: int = 0
    texts: int = 0
    chars: int = 0
    seconds: float = 0.0


class CountedEmbeddings(Embeddings):
    """The one embeddings object every contender uses, counting what it is asked to do."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.model: str = getattr(inner, "model", "unknown")
        self.dimensions: int = getattr(inner, "dimensions", 0)
        self.counter = EmbedCounter()

    def reset(self) -> EmbedCounter:
        counter, self.counter = self.counter, EmbedCounter()
        return counter

    def _count(self, texts: list[str], started: float) -> None:
        self.counter.calls += 1
        self.counter.texts += len(texts)
        self.counter.chars += sum(len(text) for text in texts)
        self.counter.seconds += time.perf_counter() - started

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        started = time.perf_counter()
        vectors = self.inner.embed_documents(texts)
        self._count(texts, started)
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        started = time.perf_counter()
        vectors = await self.inner.aembed_documents(texts)
        self._count(texts, started)
        return vectors


def make_embeddings(model: str) -> Embeddings:
    if model == "hash":
        return HashEmbeddings()
    from fengchao_chains.embeddings import get_embeddings

    return get_embeddings(model)


def splitter() -> RecursiveCharacterTextSplitter:
    """The splitter our Chunker wraps, configured the same: the same chunks for everyone."""
    return RecursiveCharacterTextSplitter(
        separators=list(SEPARATORS),
        is_separator_regex=True,
        keep_separator="end",
        chunk_size=CHUNK_SIZE,
        chunk_overlap=CHUNK_OVERLAP,
        strip_whitespace=True,
    )


# --------------------------------------------------------------------------- contenders ---
@dataclass
class Result:
    name: str
    seconds: float = 0.0
    documents: int = 0
    chunks: int = 0
    embed: EmbedCounter = field(default_factory=EmbedCounter)
    rerun_seconds: float = 0.0
    rerun_embed: EmbedCounter = field(default_factory=EmbedCounter)
    rows_after_rerun: int = 0
    report: IngestReport | None = None


def sqlalchemy_url(conninfo: str, driver: str = "postgresql+psycopg") -> URL:
    """The same server as a SQLAlchemy URL (a Unix-socket host goes in the query string,
    where it survives the URL being rendered to text)."""
    params = conninfo_to_dict(conninfo)
    host = str(params.get("host") or "localhost")
    socket = host.startswith("/")
    return URL.create(
        driver,
        username=str(params.get("user") or "postgres"),
        password=str(params["password"]) if params.get("password") else None,
        host=None if socket else host,
        port=int(str(params["port"])) if params.get("port") else None,
        database=str(params.get("dbname") or "postgres"),
        query={"host": host} if socket else {},
    )


def count_rows(database: Database, schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    with database.pool.connection() as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def run_ours(database: Database, corpus: Path, embeddings: CountedEmbeddings, batch: int) -> Result:
    registry = KnowledgeBaseRegistry(database)
    if KB_ID in {kb.id for kb in registry.all()}:
        registry.drop(KB_ID)
    kb = registry.create(
        KB_ID,
        embedding_model=embeddings.model,
        dims=embeddings.dimensions,
        chunk_size=CHUNK_SIZE,
        chunk_overlap=CHUNK_OVERLAP,
    )
    result = Result("ours")

    def once() -> IngestReport:
        return ingest(
            [corpus], database=database, knowledge_base=kb, embeddings=embeddings, batch_size=batch
        )

    embeddings.reset()
    started = time.perf_counter()
    report = once()
    result.seconds = time.perf_counter() - started
    result.embed = embeddings.reset()
    result.report = report
    result.documents, result.chunks = report.documents_read, report.chunks_written
    started = time.perf_counter()
    once()
    result.rerun_seconds = time.perf_counter() - started
    result.rerun_embed = embeddings.reset()
    result.rows_after_rerun = count_rows(database, database.schema, f"kb_{KB_ID}_chunks")
    return result


class LlamaIndexAdapter:
    """Our Embeddings as a LlamaIndex ``BaseEmbedding`` (llama-index-embeddings-langchain is
    not installed; this is what its ``LangchainEmbedding`` does)."""

    @staticmethod
    def make(embeddings: Embeddings) -> Any:
        from llama_index.core.base.embeddings.base import BaseEmbedding
        from pydantic import PrivateAttr

        class Adapter(BaseEmbedding):
            _inner: Embeddings = PrivateAttr()

            def __init__(self, inner: Embeddings, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self._inner = inner

            def _get_query_embedding(self, query: str) -> list[float]:
                return self._inner.embed_query(query)

            async def _aget_query_embedding(self, query: str) -> list[float]:
                return await self._inner.aembed_query(query)

            def _get_text_embedding(self, text: str) -> list[float]:
                return self._inner.embed_documents([text])[0]

            def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
                return self._inner.embed_documents(texts)

        return Adapter(
            embeddings,
            model_name=getattr(embeddings, "model", "embeddings"),
            embed_batch_size=EMBED_BATCH,
        )


def run_llamaindex(
    database: Database, corpus: Path, embeddings: CountedEmbeddings, batch: int
) -> Result:
    from llama_index.core import Document
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import LangchainNodeParser
    from llama_index.vector_stores.postgres import PGVectorStore

    schema = SCHEMAS["llamaindex"]
    fresh_schema(database, schema)
    url = sqlalchemy_url(database.conninfo)
    adapter = LlamaIndexAdapter.make(embeddings)
    hidden = ["url", "published_at", "source"]

    def pipeline() -> Any:
        store = PGVectorStore.from_params(
            connection_string=url,
            async_connection_string=url,
            schema_name=schema,
            table_name=TABLE,
            embed_dim=embeddings.dimensions,
            hnsw_kwargs={
                "hnsw_m": HNSW_M,
                "hnsw_ef_construction": HNSW_EF_CONSTRUCTION,
                "hnsw_ef_search": 40,
                "hnsw_dist_method": "vector_cosine_ops",
            },
        )
        return IngestionPipeline(
            transformations=[LangchainNodeParser(splitter()), adapter], vector_store=store
        )

    def once() -> tuple[int, int]:
        run = pipeline()
        documents = chunks = 0
        for records in batched(read_records(corpus), batch):
            docs = [
                Document(
                    text=record["content"],
                    id_=record["id"],
                    metadata={key: record[key] for key in ("title", *hidden)},
                    excluded_embed_metadata_keys=hidden,
                    excluded_llm_metadata_keys=hidden,
                )
                for record in records
            ]
            nodes = run.run(documents=docs)
            documents += len(docs)
            chunks += len(nodes)
        return documents, chunks

    return timed_twice(
        "llamaindex",
        once=once,
        embeddings=embeddings,
        database=database,
        schema=schema,
        table=f"data_{TABLE}",
    )


def run_langchain(
    database: Database, corpus: Path, embeddings: CountedEmbeddings, batch: int
) -> Result:
    from langchain_postgres import PGEngine, PGVectorStore
    from langchain_postgres.v2.indexes import HNSWIndex

    schema = SCHEMAS["langchain"]
    fresh_schema(database, schema)
    engine = PGEngine.from_connection_string(sqlalchemy_url(database.conninfo))
    engine.init_vectorstore_table(TABLE, embeddings.dimensions, schema_name=schema)
    text_splitter = splitter()

    def store() -> Any:
        return PGVectorStore.create_sync(engine, embeddings, TABLE, schema_name=schema)

    store().apply_vector_index(HNSWIndex(m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION))

    def once() -> tuple[int, int]:
        vectors = store()
        documents = chunks = 0
        for records in batched(read_records(corpus), batch):
            docs = [
                LCDocument(
                    page_content=record["content"],
                    metadata={k: v for k, v in record.items() if k != "content"},
                )
                for record in records
            ]
            pieces = text_splitter.split_documents(docs)
            vectors.add_documents(pieces)
            documents += len(docs)
            chunks += len(pieces)
        return documents, chunks

    try:
        return timed_twice(
            "langchain",
            once=once,
            embeddings=embeddings,
            database=database,
            schema=schema,
            table=TABLE,
        )
    finally:
        engine._run_as_sync(engine.close())  # its pool lives on the engine's own loop


def timed_twice(
    name: str,
    *,
    once: Callable[[], tuple[int, int]],
    embeddings: CountedEmbeddings,
    database: Database,
    schema: str,
    table: str,
) -> Result:
    result = Result(name)
    embeddings.reset()
    started = time.perf_counter()
    result.documents, result.chunks = once()
    result.seconds = time.perf_counter() - started
    result.embed = embeddings.reset()
    started = time.perf_counter()
    once()
    result.rerun_seconds = time.perf_counter() - started
    result.rerun_embed = embeddings.reset()
    result.rows_after_rerun = count_rows(database, schema, table)
    return result


def fresh_schema(database: Database, schema: str) -> None:
    with database.pool.connection() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


# -------------------------------------------------------------------------------- main ---
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--corpus", type=Path, help="a news JSONL instead of the generated one")
    parser.add_argument(
        "--length",
        type=length_range,
        default=(300, 900),
        help="characters of content per generated item, LO-HI (default 300-900: articles;"
        " 80-250: news briefs)",
    )
    parser.add_argument("--model", default="use-multilingual-v3")
    parser.add_argument("--batch", type=int, default=64, help="documents per batch, everyone")
    parser.add_argument(
        "--only", default="ours,llamaindex,langchain", help="comma-separated contenders"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    embeddings = CountedEmbeddings(make_embeddings(args.model))
    embeddings.embed_documents(["预热", "warm-up"])  # load the model before any timing
    contenders = {"ours": run_ours, "llamaindex": run_llamaindex, "langchain": run_langchain}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="fengchao-bench-") as tmp:
        corpus = args.corpus or Path(tmp) / "news.jsonl"
        if args.corpus is None:
            write_corpus(corpus, args.docs, args.length)
        settings = Settings(data_dir=Path(tmp), database_schema="bench")
        database = Database.start(settings)
        try:
            for name in args.only.split(","):
                print(f"  {name} ...", file=sys.stderr, flush=True)
                results.append(contenders[name](database, corpus, embeddings, args.batch))
        finally:
            database.close()
    print_results(args, results, load_before, os.getloadavg())


def print_results(
    args: argparse.Namespace,
    results: list[Result],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    shape = "given" if args.corpus else "{}-{} characters".format(*args.length)
    print(
        f"\ncorpus: {results[0].documents:,} documents ({shape}), model {args.model}, chunks"
        f" {CHUNK_SIZE}/{CHUNK_OVERLAP} chars, batches of {args.batch} documents, embedding"
        f" calls of {EMBED_BATCH}; load average {load_before[0]:.2f} before,"
        f" {load_after[0]:.2f} after (1 min), {os.cpu_count()} cores"
    )
    print(
        f"{'contender':11} {'seconds':>8} {'docs/s':>8} {'chunks':>7} {'chunks/s':>9}"
        f" {'embed s':>8} {'embed %':>8} {'texts':>7} {'chars/text':>10}"
        f" {'rerun s':>8} {'rerun emb':>9} {'rows after':>10}"
    )
    for r in results:
        print(
            f"{r.name:11} {r.seconds:8.2f} {r.documents / r.seconds:8.1f} {r.chunks:7,}"
            f" {r.chunks / r.seconds:9.1f} {r.embed.seconds:8.2f}"
            f" {r.embed.seconds / r.seconds:8.0%} {r.embed.texts:7,}"
            f" {r.embed.chars / max(r.embed.texts, 1):10.1f} {r.rerun_seconds:8.2f}"
            f" {r.rerun_embed.texts:9,} {r.rows_after_rerun:10,}"
        )
    ours = next((r for r in results if r.name == "ours"), None)
    others = [r for r in results if r.name != "ours"]
    if ours is not None and ours.report is not None:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in ours.report.stage_seconds.items())
        print(f"ours per stage (s; write overlaps embed in its own thread): {stages}")
    if ours is not None and others:
        best = min(others, key=lambda r: r.seconds)
        ratio = best.seconds / ours.seconds
        print(
            f"ours / faster of the two ({best.name}) in documents/s: {ratio:.2f}x"
            f" (target >= {TARGET}x: {'PASS' if ratio >= TARGET else 'MISS'})"
        )
        ours_rest = ours.seconds - ours.embed.seconds
        best_rest = best.seconds - best.embed.seconds
        print(
            f"outside embedding: ours {ours_rest:.2f} s, {best.name} {best_rest:.2f} s"
            f" ({best_rest / max(ours_rest, 1e-9):.2f}x); the ratio's ceiling if ours took only"
            f" its embedding time: {best.seconds / max(ours.embed.seconds, 1e-9):.2f}x"
        )
        for r in others:
            print(
                f"re-run: ours {ours.rerun_seconds:.2f} s (embedded {ours.rerun_embed.texts});"
                f" {r.name} {r.rerun_seconds:.2f} s ({r.rerun_seconds / ours.rerun_seconds:.0f}x,"
                f" embedded {r.rerun_embed.texts:,}, rows {r.chunks:,} -> {r.rows_after_rerun:,})"
            )


if __name__ == "__main__":
    main()
