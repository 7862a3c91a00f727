"""The SQL of a knowledge-base search, shared by the sync and async retriever paths.

A search runs in one transaction on one connection:

1. **vector candidates**: the ``fetch_k`` nearest chunks by cosine distance through the HNSW
   index.  With a metadata filter, pgvector's iterative scan keeps reading the index until
   enough rows pass it; should it still come back short (a very selective filter can exhaust
   ``hnsw.max_scan_tuples``), the query is repeated as an exact scan, so a filtered query
   never silently returns fewer rows than match;
2. **text candidates** (hybrid and text search): the ``fetch_k`` chunks whose jieba-segmented
   text best matches the query's words, ranked BM25-style (see below);
3. the candidates fused by reciprocal rank (in Python), then their rows fetched with the
   exact cosine distance of every one, text-only hits included, so the similarity threshold
   always applies to a real similarity and never to the fused score.

Ranking full-text matches costs time per matching row, and a query word found in a large
share of a big knowledge base (今年, 公司) matches tens of thousands of rows while telling
little about relevance (the reasoning behind IDF).  So the query's words are first checked
against PostgreSQL's own statistics of the tsvector column (``pg_stats.most_common_elems``,
kept by ANALYZE): a word estimated to match more than ``COMMON_WORD_ROWS`` rows is left out
of the text search, unless every word is that common, when the rarest one is kept.  Small
knowledge bases are never pruned.  Of a long query, only the ``MAX_TEXT_WORDS`` rarest words
are searched.  The statistics are cached per knowledge base for ``STATS_TTL`` seconds.

The text ranking weighs each query word by its inverse document frequency, as BM25 does:
a chunk's score is the sum over the words it contains of ``idf(word) * ts_rank(tsv,
word)``.  ``ts_rank`` of one word grows with its count in the chunk and saturates (1, 1.25,
1.39, ... towards 1.64 times the first occurrence), which plays BM25's term-frequency part;
``idf = ln(1 + (N - df + 0.5) / (df + 0.5))`` with ``df`` counted exactly, in the same
statement, from the GIN index (one scan per word, within the filter) and ``N`` the table's
row estimate.  ``ts_rank_cd``, used before, has no IDF: a common word counted as much as a
rare one, and on the labelled set (docs/benchmarks.md) full-text recall@5 went from 0.920
to 0.935 and hybrid MRR@10 from 0.924-0.927 to 0.941-0.942 with this change.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg import sql

from fengchao_chains.retrievers.filters import compile_filter
from fengchao_chains.retrievers.registry import KnowledgeBase
from fengchao_chains.retrievers.text_search import is_word

SearchType = Literal["hybrid", "vector", "text"]
COMMON_WORD_ROWS = 2000
MAX_TEXT_WORDS = 32
STATS_TTL = 60.0
Query = sql.SQL | sql.Composed
Statement = tuple[Query, dict[str, Any]]
_C = sql.Identifier("c")


@dataclass(frozen=True)
class Hit:
    """One chunk found, with everything the retriever reports about it."""

    chunk_id: int
    document_id: str
    position: int
    content: str
    metadata: dict[str, Any]
    distance: float
    embedding: np.ndarray | None = None
    vector_rank: int | None = None
    text_rank: int | None = None
    fused_score: float | None = None

    @property
    def similarity(self) -> float:
        return 1.0 - self.distance


@dataclass
class SearchPlan:
    """The statements of one search and how to put their results together."""

    kb: KnowledgeBase
    query_vector: np.ndarray
    search_type: SearchType
    fetch_k: int
    ef_search: int
    text_terms: Sequence[str]
    filter: Mapping[str, Any] | None = None
    rrf_k: int = 60
    with_embeddings: bool = False
    params: dict[str, Any] = field(init=False)
    where: sql.Composable = field(init=False)

    def __post_init__(self) -> None:
        compiled = compile_filter(self.filter, _C)
        self.where = compiled.clause
        self.params = {
            **compiled.params,
            "q": self.query_vector,
            "n": self.fetch_k,
        }

    @property
    def filtered(self) -> bool:
        return bool(self.filter)

    def settings(self) -> Statement | None:
        """Per-transaction settings this search needs beyond the connection's defaults."""
        if self.fetch_k > self.ef_search:  # HNSW returns at most ef_search rows per scan
            ef = str(min(self.fetch_k, 1000))
            return sql.SQL("SELECT set_config('hnsw.ef_search', %(ef)s, true)"), {"ef": ef}
        return None

    def vector_sql(self, *, full_rows: bool) -> Query:
        """Nearest chunks, re-sorted outside the index scan (relaxed order is only
        approximately sorted)."""
        columns = _row_columns(self.with_embeddings) if full_rows else sql.SQL("c.id")
        return sql.SQL(
            "WITH nearest AS MATERIALIZED ("
            " SELECT {columns}, c.embedding <=> %(q)s AS distance"
            " FROM {chunks} c WHERE {where}"
            " ORDER BY c.embedding <=> %(q)s LIMIT %(n)s)"
            " SELECT * FROM nearest ORDER BY distance + 0"
        ).format(columns=columns, chunks=self.kb.chunks_table, where=self.where)

    def stats_sql(self) -> Statement:
        """The estimated row count and the most common words of the chunk table."""
        query = sql.SQL(
            "SELECT c.reltuples, s.most_common_elems::text::text[], s.most_common_elem_freqs"
            " FROM pg_class c LEFT JOIN pg_stats s ON s.schemaname = current_schema()"
            " AND s.tablename = c.relname AND s.attname = 'tsv'"
            " WHERE c.oid = to_regclass(%(table)s)"
        )
        return query, {"table": self.kb.chunks_table_name}

    def text_sql(self) -> Query:
        """The ``fetch_k`` best chunks by IDF-weighted ``ts_rank`` (module docstring): one
        index scan per word (``%(words)s``), ``%(rows)s`` the table's row estimate."""
        return sql.SQL(
            "WITH hits AS MATERIALIZED ("
            " SELECT w.word, c.id, ts_rank(c.tsv, w.q) AS weight"
            " FROM (SELECT word, to_tsquery('simple', word) AS q"
            "  FROM unnest(%(words)s::text[]) AS word) w"
            " CROSS JOIN LATERAL (SELECT c.id, c.tsv FROM {chunks} c"
            "  WHERE c.tsv @@ w.q AND {where}) c),"
            " df AS (SELECT word, count(*) AS n FROM hits GROUP BY word),"
            " idf AS (SELECT word,"
            "  ln(1 + (greatest(%(rows)s, max(n) OVER ()) - n + 0.5) / (n + 0.5)) AS idf"
            "  FROM df)"
            " SELECT h.id FROM hits h JOIN idf USING (word)"
            " GROUP BY h.id ORDER BY sum(h.weight * idf.idf) DESC, h.id LIMIT %(n)s"
        ).format(chunks=self.kb.chunks_table, where=self.where)

    def rows_sql(self) -> Query:
        return sql.SQL(
            "SELECT {columns}, c.embedding <=> %(q)s AS distance"
            " FROM {chunks} c WHERE c.id = ANY(%(ids)s)"
        ).format(columns=_row_columns(self.with_embeddings), chunks=self.kb.chunks_table)

    def fuse(self, vector_ids: Sequence[int], text_ids: Sequence[int]) -> list[tuple[int, float]]:
        """Reciprocal rank fusion: each list adds 1 / (rrf_k + rank); best first."""
        scores: dict[int, float] = {}
        for ranking in (vector_ids, text_ids):
            for rank, chunk_id in enumerate(ranking, start=1):
                scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (self.rrf_k + rank)
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def _row_columns(with_embeddings: bool) -> sql.Composable:
    columns = "c.id, c.document_id, c.position, c.content, c.metadata"
    return sql.SQL(columns + (", c.embedding" if with_embeddings else ", NULL::vector"))


def hit_from_row(row: Sequence[Any], **extra: Any) -> Hit:
    chunk_id, document_id, position, content, metadata, embedding, distance = row
    return Hit(
        chunk_id=chunk_id,
        document_id=document_id,
        position=position,
        content=content,
        metadata=metadata,
        distance=float(distance),
        embedding=embedding,
        **extra,
    )


def fused_hits(
    plan: SearchPlan,
    vector_ids: Sequence[int],
    text_ids: Sequence[int],
    rows: Sequence[Sequence[Any]],
) -> list[Hit]:
    """The fetched rows in fused order, each with its ranks and fused score."""
    by_id = {row[0]: row for row in rows}
    vector_rank = {chunk_id: rank for rank, chunk_id in enumerate(vector_ids, start=1)}
    text_rank = {chunk_id: rank for rank, chunk_id in enumerate(text_ids, start=1)}
    return [
        hit_from_row(
            by_id[chunk_id],
            vector_rank=vector_rank.get(chunk_id),
            text_rank=text_rank.get(chunk_id),
            fused_score=score,
        )
        for chunk_id, score in plan.fuse(vector_ids, text_ids)
        if chunk_id in by_id  # a chunk deleted between the statements is skipped
    ]


# For the rest of the transaction: no index scans, so the next vector query is exact.
_EXACT_SCAN: Statement = (sql.SQL("SELECT set_config('enable_indexscan', 'off', true)"), {})
Steps = Generator[Statement, list[Any], list[Hit]]


def search_steps(plan: SearchPlan) -> Steps:
    """The search as a generator of statements: it yields each statement and receives its
    rows, so one implementation serves both the sync and the async connection."""
    settings = plan.settings()
    if settings is not None:
        yield settings
    if plan.search_type == "vector":
        rows = yield from _vector_rows(plan, full_rows=True)
        return [hit_from_row(row, vector_rank=rank) for rank, row in enumerate(rows, start=1)]
    vector_ids: list[int] = []
    if plan.search_type == "hybrid":
        vector_ids = [row[0] for row in (yield from _vector_rows(plan, full_rows=False))]
    text_ids: list[int] = []
    if plan.text_terms:
        stats = _cached_word_stats(plan.kb)
        if stats is None:
            stats = _remember_word_stats(plan.kb, (yield plan.stats_sql()))
        words = searchable_words(plan.text_terms, stats.word_rows)
        if words:
            params = {**plan.params, "words": words, "rows": stats.rows}
            text_ids = [row[0] for row in (yield plan.text_sql(), params)]
    candidates = list(dict.fromkeys([*vector_ids, *text_ids]))
    if not candidates:
        return []
    rows = yield plan.rows_sql(), {**plan.params, "ids": candidates}
    return fused_hits(plan, vector_ids, text_ids, rows)


def _vector_rows(
    plan: SearchPlan, *, full_rows: bool
) -> Generator[Statement, list[Any], list[Any]]:
    rows = yield plan.vector_sql(full_rows=full_rows), plan.params
    if plan.filtered and len(rows) < plan.fetch_k:
        yield _EXACT_SCAN
        rows = yield plan.vector_sql(full_rows=full_rows), plan.params
    return rows


def run_search(conn: psycopg.Connection[Any], plan: SearchPlan) -> list[Hit]:
    steps = search_steps(plan)
    try:
        statement = next(steps)
        while True:
            statement = steps.send(conn.execute(*statement).fetchall())
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun_search(conn: psycopg.AsyncConnection[Any], plan: SearchPlan) -> list[Hit]:
    steps = search_steps(plan)
    try:
        statement = next(steps)
        while True:
            cursor = await conn.execute(*statement)
            statement = steps.send(await cursor.fetchall())
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class WordStats:
    """What PostgreSQL's statistics say of a chunk table's words (see :meth:`stats_sql`)."""

    rows: float  # the table's estimated row count (0 before the first ANALYZE)
    word_rows: dict[str, float]  # estimated matching rows per common word


_word_stats: dict[tuple[str, datetime], tuple[float, WordStats]] = {}


def _cached_word_stats(kb: KnowledgeBase) -> WordStats | None:
    cached = _word_stats.get((kb.id, kb.created_at))
    if cached is None or cached[0] < time.monotonic():
        return None
    return cached[1]


def _remember_word_stats(kb: KnowledgeBase, rows: list[Any]) -> WordStats:
    """The statistics in the one row of :meth:`stats_sql`, cached for ``STATS_TTL``."""
    total, estimate = 0.0, {}
    if rows:
        total = max(float(rows[0][0] or 0), 0.0)  # reltuples is -1 before the first ANALYZE
        if rows[0][1]:
            words, frequencies = rows[0][1], rows[0][2]
            estimate = {w: f * total for w, f in zip(words, frequencies, strict=False)}
    stats = WordStats(rows=total, word_rows=estimate)
    _word_stats[(kb.id, kb.created_at)] = (time.monotonic() + STATS_TTL, stats)
    return stats


def searchable_words(terms: Sequence[str], word_rows: dict[str, float]) -> list[str]:
    """``terms`` without the words too common to rank by, nor any that is not a plain word
    (see the module docstring); of a long query, its ``MAX_TEXT_WORDS`` rarest words, as
    each word costs one index scan."""
    words = [t for t in terms if is_word(t)]
    kept = [t for t in words if word_rows.get(t, 0.0) <= COMMON_WORD_ROWS]
    if len(kept) > MAX_TEXT_WORDS:
        rarest = set(sorted(kept, key=lambda t: word_rows.get(t, 0.0))[:MAX_TEXT_WORDS])
        kept = [t for t in kept if t in rarest]
    if kept or not words:
        return kept
    return [min(words, key=lambda t: word_rows.get(t, 0.0))]
