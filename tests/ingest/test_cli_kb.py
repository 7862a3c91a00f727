"""``fengchao ingest`` and ``fengchao kb ...``: the real commands against real Postgres with
the fast USE model; in-process (typer's runner: one model load for the module) except where
the process boundary matters (stdin, exit codes of the installed script)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from fengchao_chains.db import Database
from fengchao_chains.ingest.lock import knowledge_base_lock
from fengchao_chains.ingest.reembed import _build_next_table
from fengchao_chains.retrievers import KnowledgeBase, KnowledgeBaseRegistry
from fengchao_chains.settings import Settings
from tests.ingest.test_pipeline import news, write_jsonl
from tests.processes import FENGCHAO, clean_env, ok
from tests.processes import run_cli_in_process as run_cli

USE = "use-multilingual-v3"
E5 = "multilingual-e5-small"


@pytest.fixture
def env(postgres_url: str, schema_name: str) -> dict[str, str]:
    return clean_env(
        FENGCHAO_DATABASE_URL=postgres_url,
        FENGCHAO_DATABASE_SCHEMA=schema_name,
        FENGCHAO_EMBEDDING_MODEL=USE,
    )


def test_ingest_an_unknown_kb_is_refused_with_close_matches(env: dict[str, str], tmp_path: Path):
    source = write_jsonl(tmp_path / "news.jsonl", news(2))
    ok(run_cli("kb", "create", "city_news", env=env))
    result = run_cli("ingest", str(source), "--kb", "city_new", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: unknown knowledge base 'city_new'; did you mean 'city_news'?"
        " (`fengchao kb list` lists them)"
    )


def test_ingest_create_then_list_documents_search_and_delete(env: dict[str, str], tmp_path: Path):
    rows = [*news(3), {"id": "gugong", "title": "故宫钟表展", "content": "故宫博物院推出钟表特展。",
                       "url": "https://news.example.com/gugong", "source": "示例日报"}]  # fmt: skip
    source = write_jsonl(tmp_path / "news.jsonl", [*rows, "{broken"])
    first = ok(run_cli("ingest", str(source), "--kb", "city", "--create", "--json", env=env))
    summary = json.loads(first.stdout)
    assert (summary["documents_read"], summary["new"], summary["problems"]) == (4, 4, 1)
    assert summary["chunks_written"] == 4
    assert set(summary["stage_seconds"]) == {"load", "chunk", "embed", "write"}
    assert summary["items_per_second"] > 0
    assert f"problem: {source}:5: not valid JSON" in first.stderr
    assert "ingest:" not in first.stderr  # a short run logs no progress line

    again = ok(run_cli("ingest", str(source), "--kb", "city", env=env))
    assert "0 new, 0 changed, 4 unchanged" in again.stderr
    assert "chunks: 0 written, 0 embedded" in again.stderr

    listed = json.loads(ok(run_cli("kb", "list", "--json", env=env)).stdout)
    assert [(k["id"], k["embedding_model"], k["dims"], k["documents"], k["chunks"])
            for k in listed] == [("city", USE, 512, 4, 4)]  # fmt: skip
    assert "city" in ok(run_cli("kb", "list", env=env)).stdout

    documents = json.loads(ok(run_cli("kb", "documents", "city", "--json", env=env)).stdout)
    assert {d["document_id"] for d in documents} == {"n-0", "n-1", "n-2", "gugong"}
    page = json.loads(
        ok(
            run_cli("kb", "documents", "city", "--limit", "2", "--offset", "3", "--json", env=env)
        ).stdout
    )
    assert len(page) == 1

    hits = json.loads(
        ok(
            run_cli("kb", "search", "city", "故宫有什么展览", "--top-k", "2", "--json", env=env)
        ).stdout
    )
    assert hits[0]["document_id"] == "gugong"
    assert hits[0]["title"] == "故宫钟表展"
    assert hits[0]["url"] == "https://news.example.com/gugong"
    assert 0 < hits[0]["similarity"] <= 1
    assert hits[0]["distance"] == pytest.approx(1 - hits[0]["similarity"])
    assert hits[0]["fused_score"] > 0
    text = ok(run_cli("kb", "search", "city", "故宫", "--search-type", "text", env=env)).stdout
    assert "故宫钟表展" in text
    filtered = json.loads(
        ok(
            run_cli(
                "kb", "search", "city", "故宫", "--filter", '{"source": "没有"}', "--json", env=env
            )
        ).stdout
    )
    assert filtered == []
    strict = json.loads(
        ok(
            run_cli("kb", "search", "city", "量子计算", "--threshold", "1", "--json", env=env)
        ).stdout
    )
    assert strict == []

    assert ok(run_cli("kb", "delete-document", "city", "gugong", env=env))
    missing = run_cli("kb", "delete-document", "city", "gugong", env=env)
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "error: no document 'gugong' in city",
    )
    refused = run_cli("kb", "delete", "city", env=env)  # no terminal to confirm on
    assert refused.returncode == 1
    ok(run_cli("kb", "delete", "city", "--yes", env=env))
    assert json.loads(ok(run_cli("kb", "list", "--json", env=env)).stdout) == []


def test_ingest_from_stdin_and_on_error_fail(env: dict[str, str], tmp_path: Path) -> None:
    ok(run_cli("kb", "create", "feed", env=env))
    lines = "\n".join(json.dumps(row, ensure_ascii=False) for row in news(3))
    refused = subprocess.run(
        [FENGCHAO, "ingest", "-", "--kb", "feed", "--on-error", "fail"],
        input=lines + "\n[]\n",
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "problem: <stdin>:4: not a JSON object" in refused.stderr
    assert "error: 1 problem(s) in the source; nothing was written" in refused.stderr
    accepted = subprocess.run(
        [FENGCHAO, "ingest", "-", "--kb", "feed", "--json"],
        input=lines,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["new"] == 3


def test_dry_run_writes_nothing_not_even_the_kb(env: dict[str, str], tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", news(5))
    result = ok(
        run_cli("ingest", str(source), "--kb", "trial", "--create", "--dry-run", "--json", env=env)
    )
    summary = json.loads(result.stdout)
    assert summary["dry_run"] is True
    assert (summary["new"], summary["chunks_written"], summary["chunks_embedded"]) == (5, 5, 0)
    assert json.loads(ok(run_cli("kb", "list", "--json", env=env)).stdout) == []


def test_usage_errors(env: dict[str, str], tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", news(1))
    assert run_cli("ingest", str(source), "--batch-size", "0", env=env).returncode == 2
    both = run_cli("kb", "search", "x", "q", "--threshold", "500", "--min-similarity", "0.5",
                   env=env)  # fmt: skip
    assert both.returncode == 2
    bad_filter = run_cli("kb", "search", "x", "q", "--filter", "{", env=env)
    assert bad_filter.returncode == 2
    missing = run_cli("ingest", str(tmp_path / "nope.jsonl"), "--create", env=env)
    assert missing.returncode == 1
    assert "error: no such file or directory" in missing.stderr
    existing = run_cli("kb", "create", "dup", env=env)
    assert existing.returncode == 0
    again = run_cli("kb", "create", "dup", env=env)
    assert (again.returncode, again.stderr.strip()) == (
        1,
        "error: knowledge base 'dup' already exists",
    )


def test_reembed_switches_model_and_keeps_every_chunk(
    env: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    rows = [
        *news(4),
        {"id": "gugong", "title": "故宫钟表展", "content": "故宫博物院推出钟表特展。"},
    ]
    source = write_jsonl(tmp_path / "news.jsonl", rows)
    ok(run_cli("ingest", str(source), "--kb", "swap", "--create", env=env))
    database = Database.start(settings)
    try:
        kb = KnowledgeBaseRegistry(database).get("swap")
        before = _chunks(database, kb)
        # A re-embedding killed after building part of its table leaves the old one serving.
        _build_next_table(database, kb, 384)
        with knowledge_base_lock(database, kb, shared=True):  # an ingestion is running
            busy = run_cli("kb", "reembed", "swap", "--model", E5, env=env)
        assert busy.returncode == 1
        assert "is being ingested by another process" in busy.stderr

        result = ok(run_cli("kb", "reembed", "swap", "--model", E5, "--batch-size", "2", env=env))
        assert f"re-embedded 5 chunks of swap with {E5} (384 dimensions" in result.stdout
        kb = KnowledgeBaseRegistry(database).get("swap")
        assert (kb.embedding_model, kb.dims) == (E5, 384)
        after = _chunks(database, kb)
        assert [row[:3] for row in after] == [row[:3] for row in before]
        assert all(len(row[3]) == 384 for row in after)
        with database.pool.connection() as conn:
            names = {
                r[0]
                for r in conn.execute(
                    "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = current_schema() AND relname LIKE 'kb_swap%%'"
                )
            }
        assert names == {
            "kb_swap_documents", "kb_swap_documents_pkey", "kb_swap_chunks", "kb_swap_chunks_pkey",
            "kb_swap_chunks_id_seq", "kb_swap_chunks_document_id_position_key", "kb_swap_hnsw",
            "kb_swap_tsv", "kb_swap_hash",
        }  # fmt: skip
        with database.pool.connection() as conn:  # analysed: the text search's statistics
            analysed = conn.execute(
                "SELECT reltuples FROM pg_class WHERE oid = 'kb_swap_chunks'::regclass"
            ).fetchone()
        assert analysed == (5,)
    finally:
        database.close()
    hits = json.loads(ok(run_cli("kb", "search", "swap", "故宫的展览", "--json", env=env)).stdout)
    assert hits[0]["document_id"] == "gugong"
    again = ok(run_cli("ingest", str(source), "--kb", "swap", "--json", env=env))
    assert json.loads(again.stdout)["unchanged"] == 5


def _chunks(database: Database, kb: KnowledgeBase) -> list[tuple[Any, ...]]:
    query = sql.SQL(
        "SELECT document_id, position, content_hash, embedding FROM {} ORDER BY 1, 2"
    ).format(kb.chunks_table)
    with database.pool.connection() as conn:
        return conn.execute(query).fetchall()


def test_progress_lines_when_stderr_is_not_a_terminal(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fengchao_chains.cli_ingest.LOG_EVERY", 0.0)
    source = write_jsonl(tmp_path / "news.jsonl", news(4))
    args = ("ingest", str(source), "--kb", "logged", "--create", "--batch-size", "2")
    result = ok(run_cli(*args, env=env))
    assert "ingest: 2/4 documents, 2 chunks written" in result.stderr
    assert "ingest: 4/4 documents, 4 chunks written" in result.stderr
    quiet = ok(run_cli(*args, "--no-progress", env=env))
    assert "ingest:" not in quiet.stderr
