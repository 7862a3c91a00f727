"""The ingestion pipeline against a real knowledge base (real Postgres, real USE model)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from psycopg import sql

from fengchao_chains.db import Database
from fengchao_chains.embeddings import get_embeddings
from fengchao_chains.ingest.errors import IngestError
from fengchao_chains.ingest.hashing import embedding_text
from fengchao_chains.ingest.report import Progress
from fengchao_chains.ingest.run import ingest, validate
from fengchao_chains.ingest.sources import SourceProblem
from fengchao_chains.retrievers import (
    ChunkStore,
    EmbeddingMismatchError,
    KnowledgeBase,
    KnowledgeBaseRegistry,
)
from fengchao_chains.settings import Settings

USE = "use-multilingual-v3"


def news(n: int, *, start: int = 0, prefix: str = "n") -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i}",
            "title": f"第{i}条新闻",
            "content": f"这是第{i}条新闻的正文。它讲述了城市{i}的变化。",
            "url": f"https://news.example.com/{i}",
            "published_at": "2024-05-01",
            "source": "测试日报",
        }
        for i in range(start, start + n)
    ]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def kb(database: Database) -> KnowledgeBase:
    return KnowledgeBaseRegistry(database).create(
        "pipeline_test", embedding_model=USE, dims=512, chunk_size=60, chunk_overlap=10
    )


@pytest.fixture(scope="module")
def use_embeddings() -> Any:
    return get_embeddings(USE, Settings())


def chunk_rows(database: Database, kb: KnowledgeBase) -> list[tuple[Any, ...]]:
    query = sql.SQL(
        "SELECT document_id, position, content, content_hash, embedding, metadata FROM {}"
        " ORDER BY document_id, position"
    ).format(kb.chunks_table)
    with database.pool.connection() as conn:
        rows = conn.execute(query).fetchall()
    return [(*row[:4], tuple(row[4].tolist()), row[5]) for row in rows]


def test_ingest_writes_documents_and_chunks_then_a_rerun_writes_nothing(
    database: Database, kb: KnowledgeBase, use_embeddings: Any, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", news(10))
    seen: list[Progress] = []
    report = ingest(
        [source],
        database=database,
        knowledge_base=kb,
        embeddings=use_embeddings,
        batch_size=4,
        on_progress=seen.append,
    )
    assert (report.documents_read, report.new, report.changed, report.unchanged) == (10, 10, 0, 0)
    assert report.problems == 0
    assert report.chunks_written == report.chunks_embedded == 10
    assert report.embeddings_reused == 0
    assert set(report.stage_seconds) == {"load", "chunk", "embed", "write"}
    assert [p.done for p in seen] == [4, 8, 10]
    assert seen[-1].total == 10
    rows = chunk_rows(database, kb)
    assert len(rows) == 10
    for document_id, position, content, content_hash, embedding, metadata in rows:
        title = metadata["title"]
        assert content_hash == hashlib.sha256(f"{title}\n{content}".encode()).hexdigest()
        assert len(embedding) == 512
        assert position == 0
        assert metadata["url"].startswith("https://news.example.com/")
        assert document_id.startswith("n-")
    first = rows[0]
    expected = use_embeddings.embed_documents([embedding_text(first[5]["title"], first[2])])[0]
    assert np.allclose(first[4], expected, atol=1e-5)

    again = ingest([source], database=database, knowledge_base=kb, embeddings=use_embeddings)
    assert (again.new, again.changed, again.unchanged) == (0, 0, 10)
    assert again.chunks_written == again.chunks_embedded == again.embeddings_reused == 0
    assert chunk_rows(database, kb) == rows


def test_a_changed_document_is_replaced_and_its_unchanged_chunks_keep_their_vectors(
    database: Database, kb: KnowledgeBase, use_embeddings: Any, tmp_path: Path
) -> None:
    long_text = "第一段讲故宫的钟表展览。" * 4 + "\n\n" + "第二段讲门票和预约。" * 4
    row = {"id": "long", "title": "故宫", "content": long_text}
    source = write_jsonl(tmp_path / "a.jsonl", [row, *news(2)])
    ingest([source], database=database, knowledge_base=kb, embeddings=use_embeddings)
    before = [r for r in chunk_rows(database, kb) if r[0] == "long"]
    assert len(before) >= 2

    row["content"] = long_text.replace("第二段讲门票和预约。", "第二段讲开放时间。")
    write_jsonl(source, [row, *news(2)])
    report = ingest([source], database=database, knowledge_base=kb, embeddings=use_embeddings)
    assert (report.new, report.changed, report.unchanged) == (0, 1, 2)
    assert report.embeddings_reused >= 1  # the first paragraph's chunk is unchanged
    assert report.chunks_embedded == report.chunks_written - report.embeddings_reused
    after = [r for r in chunk_rows(database, kb) if r[0] == "long"]
    assert [r[1] for r in after] == list(range(len(after)))  # old chunks all gone
    assert after[0][3] == before[0][3]
    assert after[0][4] == before[0][4]
    assert all("开放时间" in r[2] or "第一段" in r[2] for r in after)


def test_other_chunking_reingests_every_document(
    database: Database, kb: KnowledgeBase, use_embeddings: Any, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", news(3))
    ingest([source], database=database, knowledge_base=kb, embeddings=use_embeddings)
    report = ingest(
        [source],
        database=database,
        knowledge_base=kb,
        embeddings=use_embeddings,
        chunk_size=30,
        chunk_overlap=0,
    )
    assert report.changed == 3


def test_problems_are_reported_with_their_location_and_skipped(
    database: Database, kb: KnowledgeBase, use_embeddings: Any, tmp_path: Path
) -> None:
    source = write_jsonl(
        tmp_path / "bad.jsonl",
        [news(1)[0], "{not json", "[1, 2]", {"id": "x"}, news(1, start=1)[0]],
    )
    problems: list[SourceProblem] = []
    report = ingest(
        [source],
        database=database,
        knowledge_base=kb,
        embeddings=use_embeddings,
        on_problem=problems.append,
    )
    assert report.problems == 3
    assert report.new == 2
    assert [p.location for p in problems] == [f"{source}:2", f"{source}:3", f"{source}:4"]


def test_on_error_fail_checks_everything_first_and_writes_nothing(
    database: Database, kb: KnowledgeBase, use_embeddings: Any, tmp_path: Path
) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", news(5))
    bad = write_jsonl(tmp_path / "bad.jsonl", [*news(3, start=5), "{oops"])
    problems: list[SourceProblem] = []
    with pytest.raises(IngestError, match=r"^1 problem\(s\) in the source; nothing was written"):
        ingest(
            [good, bad],
            database=database,
            knowledge_base=kb,
            embeddings=use_embeddings,
            on_error="fail",
            on_problem=problems.append,
        )
    assert [p.location for p in problems] == [f"{bad}:4"]
    assert ChunkStore(database, kb).documents() == []
    assert validate([good]) == 0


def test_on_error_fail_reads_stdin_twice_through_a_spool(
    database: Database,
    kb: KnowledgeBase,
    use_embeddings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [*news(2), "{oops"])
    with source.open("rb") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        problems: list[SourceProblem] = []
        with pytest.raises(IngestError):
            ingest(
                ["-"],
                database=database,
                knowledge_base=kb,
                embeddings=use_embeddings,
                on_error="fail",
                on_problem=problems.append,
            )
    assert [p.location for p in problems] == ["<stdin>:3"]
    write_jsonl(source, news(2))
    with source.open("rb") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        report = ingest(
            ["-"],
            database=database,
            knowledge_base=kb,
            embeddings=use_embeddings,
            on_error="fail",
        )
    assert report.new == 2


def test_dry_run_reports_without_embedding_or_writing(
    database: Database, kb: KnowledgeBase, use_embeddings: Any, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", news(4))
    ingest([source], database=database, knowledge_base=kb, embeddings=use_embeddings)
    write_jsonl(source, [*news(3), {**news(1, start=3)[0], "title": "改了"}, *news(2, start=4)])
    report = ingest([source], database=database, knowledge_base=kb, dry_run=True)
    assert report.dry_run
    assert (report.new, report.changed, report.unchanged) == (2, 1, 3)
    assert report.chunks_written == 3  # would be written
    assert report.chunks_embedded == 0
    assert len(ChunkStore(database, kb).documents()) == 4


def test_duplicate_ids_in_a_batch_keep_the_last_one(
    database: Database, kb: KnowledgeBase, use_embeddings: Any, tmp_path: Path
) -> None:
    first, second = news(1)[0], {**news(1)[0], "content": "后来的版本。"}
    source = write_jsonl(tmp_path / "dup.jsonl", [first, second])
    report = ingest([source], database=database, knowledge_base=kb, embeddings=use_embeddings)
    assert (report.documents_read, report.duplicates, report.new) == (2, 1, 1)
    assert [r[2] for r in chunk_rows(database, kb)] == ["后来的版本。"]


@pytest.mark.parametrize(
    ("wait", "kept"),
    [(0.0, (4, 8)), (1.0, (4,))],
    ids=["at-once", "after-every-batch-was-prepared"],
)
def test_a_stop_request_ends_the_run_after_whole_batches(
    database: Database,
    kb: KnowledgeBase,
    use_embeddings: Any,
    tmp_path: Path,
    *,
    wait: float,
    kept: tuple[int, ...],
) -> None:
    """The stop is set once the first batch is written: at once (the batch in flight then
    commits whole), or a second later, when the reader has prepared every other batch (one
    queued, one waiting to be), which must not be written."""
    source = write_jsonl(tmp_path / "news.jsonl", news(12))
    stop = threading.Event()

    def stop_after_first(progress: Progress) -> None:
        time.sleep(wait)
        stop.set()

    report = ingest(
        [source],
        database=database,
        knowledge_base=kb,
        embeddings=use_embeddings,
        batch_size=4,
        on_progress=stop_after_first,
        stop=stop,
    )
    assert report.stopped
    stored = len(ChunkStore(database, kb).documents())
    assert stored in kept
    rest = ingest([source], database=database, knowledge_base=kb, embeddings=use_embeddings)
    assert (rest.unchanged, rest.new) == (stored, 12 - stored)


def test_an_error_in_the_writer_thread_surfaces_in_the_caller(
    database: Database, kb: KnowledgeBase, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", news(9))
    with pytest.raises(EmbeddingMismatchError, match="16-dimensional embedding"):
        ingest(
            [source],
            database=database,
            knowledge_base=kb,
            embeddings=DeterministicFakeEmbedding(size=16),  # no model id: the store checks
            batch_size=2,
        )
    assert ChunkStore(database, kb).documents() == []


def test_embeddings_of_another_model_are_refused(
    database: Database, kb: KnowledgeBase, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", news(1))
    e5 = get_embeddings("multilingual-e5-small", Settings())
    with pytest.raises(EmbeddingMismatchError, match="kb reembed pipeline_test"):
        ingest([source], database=database, knowledge_base=kb, embeddings=e5)


# --------------------------------------------------------------------------- memory ------
MEMORY_SCRIPT = """
import json, resource, sys
MODEL = "use-multilingual-v3"
from fengchao_chains.db import Database
from fengchao_chains.embeddings import get_embeddings
from fengchao_chains.ingest.run import ingest
from fengchao_chains.retrievers import KnowledgeBaseRegistry
from fengchao_chains.settings import Settings

settings = Settings(database_url=sys.argv[1], database_schema=sys.argv[2])
database = Database.start(settings)
kb = KnowledgeBaseRegistry(database).create(sys.argv[5], embedding_model=MODEL, dims=512)
embeddings = get_embeddings(kb.embedding_model, settings)
# warm-up: loads the model and jieba's dictionary, opens the pool's connections
ingest([sys.argv[3]], database=database, knowledge_base=kb, embeddings=embeddings)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = ingest([sys.argv[4]], database=database, knowledge_base=kb, embeddings=embeddings)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
database.close()
print(json.dumps({"growth_kb": after - before, "new": report.new, "seconds": report.seconds}))
"""


def generated_corpus(path: Path, n: int, prefix: str) -> Path:
    """``n`` distinct documents made of 64 distinct texts, so the run exercises reading,
    chunking, lookups and writes at full size while most vectors are reused."""
    with path.open("w", encoding="utf-8") as file:
        for i in range(n):
            row = {
                "id": f"{prefix}-{i}",
                "title": f"标题{i % 64}",
                "content": f"第{i % 64}段新闻正文，" + "关于城市建设的报道。" * 3,
                "url": f"https://example.com/{prefix}/{i}",
            }
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@pytest.mark.slow
def test_memory_stays_flat_whatever_the_input_size(
    database: Database, settings: Settings, postgres_url: str, tmp_path: Path
) -> None:
    warm = generated_corpus(tmp_path / "warm.jsonl", 300, "w")
    growth: dict[int, int] = {}
    for n in (2_000, 20_000):
        corpus = generated_corpus(tmp_path / f"c{n}.jsonl", n, f"c{n}")
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                MEMORY_SCRIPT,
                postgres_url,
                settings.database_schema,
                str(warm),
                str(corpus),
                f"memory_{n}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        assert measured["new"] == n
        growth[n] = measured["growth_kb"]
    # ru_maxrss is in KiB (about 0.1 MiB of growth was measured for both sizes)
    assert growth[20_000] < 16 * 1024, growth
    assert growth[20_000] - growth[2_000] < 8 * 1024, growth


def has_vector_index(database: Database, kb: KnowledgeBase) -> bool:
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema()"
            " AND indexname = %s AND indexdef LIKE %s",
            (f"kb_{kb.id}_hnsw", "%USING hnsw%"),
        ).fetchone()
    return bool(row and row[0] == 1)


def test_a_first_load_builds_the_vector_index_once_at_the_end(
    database: Database, kb: KnowledgeBase, use_embeddings: Any, tmp_path: Path
) -> None:
    """An empty knowledge base is loaded without index maintenance and indexed afterwards;
    a load killed before that point (index missing, rows present) gets it from the next run,
    and a load into a filled knowledge base keeps the index throughout."""
    source = write_jsonl(tmp_path / "a.jsonl", news(6))
    ingest([source], database=database, knowledge_base=kb, embeddings=use_embeddings)
    assert has_vector_index(database, kb)
    assert not ChunkStore(database, kb).begin_bulk_load()  # not empty: the index stays
    assert has_vector_index(database, kb)

    with database.pool.connection() as conn:  # what a run killed mid bulk load leaves
        conn.execute(sql.SQL("DROP INDEX {}").format(kb.vector_index))
    more = write_jsonl(tmp_path / "b.jsonl", news(3, start=6))
    report = ingest([more], database=database, knowledge_base=kb, embeddings=use_embeddings)
    assert report.new == 3
    assert has_vector_index(database, kb)


def analysed_rows(database: Database, kb: KnowledgeBase) -> float:
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (kb.chunks_table_name,)
        ).fetchone()
    assert row is not None
    return float(row[0])


def test_a_load_that_changes_a_tenth_of_the_chunks_refreshes_the_statistics(
    database: Database, kb: KnowledgeBase, use_embeddings: Any, tmp_path: Path
) -> None:
    """The text search weighs words by PostgreSQL's statistics of the chunk table, so a
    load that changed it by a tenth or more analyses it at once; a small top-up does not
    (autovacuum's job)."""
    assert analysed_rows(database, kb) < 0  # never analysed
    ingest(
        [write_jsonl(tmp_path / "a.jsonl", news(20))],
        database=database,
        knowledge_base=kb,
        embeddings=use_embeddings,
    )
    assert analysed_rows(database, kb) == 20
    ingest(
        [write_jsonl(tmp_path / "b.jsonl", news(1, start=20))],
        database=database,
        knowledge_base=kb,
        embeddings=use_embeddings,
    )
    assert analysed_rows(database, kb) == 20  # 1 of 20 chunks: under a tenth
    ingest(
        [write_jsonl(tmp_path / "c.jsonl", news(3, start=21))],
        database=database,
        knowledge_base=kb,
        embeddings=use_embeddings,
    )
    assert analysed_rows(database, kb) == 24
