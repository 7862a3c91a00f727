"""Peak memory of ``ingest()`` over 100k news items: does the process stay flat?

``--docs`` short generated news items (title + 80-250 characters of Chinese from jieba's
dictionary words; fixed seed) are written to a JSONL file first, one line at a time, and then
ingested from it by the real ``ingest(...)`` with the packaged USE model into a fresh
knowledge base: nothing holds the corpus in a list.  A thread samples this process's RSS
(psutil) every 0.5 s together with the documents done so far (the progress callback).

Reported: RSS before ingesting (model loaded), after the warm-up (the first 5,000 documents),
at 25/50/75/100 %, the peak, the growth from the warm-up to the end (target: flat, under
50 MB), and documents/s.  The embedded Postgres server runs in its own processes and is not
counted.

    .venv/bin/python bench/kb_ingest_memory.py [--docs 100000] [--model use-multilingual-v3]
    (embedded Postgres in a temporary directory, or FENGCHAO_DATABASE_URL; several minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench._corpus import vocabulary  # noqa: E402
from fengchao_chains.db import Database  # noqa: E402
from fengchao_chains.embeddings import get_embeddings  # noqa: E402
from fengchao_chains.ingest.report import Progress  # noqa: E402
from fengchao_chains.ingest.run import ingest  # noqa: E402
from fengchao_chains.retrievers import KnowledgeBaseRegistry  # noqa: E402
from fengchao_chains.settings import Settings  # noqa: E402

MB = 1024 * 1024
WARM_UP = 5000
GROWTH_TARGET_MB = 50.0
KB_ID = "bench_memory"


def write_corpus(path: Path, docs: int, seed: int = 20261123) -> None:
    """``docs`` short news items, written line by line."""
    rng = np.random.default_rng(seed)
    words = np.array(vocabulary(8000))
    ends = np.array(["。", "。", "！", "？"])
    with path.open("w", encoding="utf-8") as file:
        for i in range(docs):
            target = int(rng.integers(80, 251))
            sentences: list[str] = []
            size = 0
            while size < target:
                sentence = "".join(rng.choice(words, int(rng.integers(4, 10)))) + rng.choice(ends)
                sentences.append(sentence)
                size += len(sentence)
            record = {
                "id": f"short-{i:07d}",
                "title": "".join(rng.choice(words, int(rng.integers(3, 6)))),
                "published_at": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}",
                "source": f"来源{i % 9}",
                "content": "".join(sentences),
            }
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class Sample:
    seconds: float
    rss: int
    done: int


class RssSampler:
    """This process's RSS every ``interval`` seconds, with the documents done at that time."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.process = psutil.Process(os.getpid())
        self.samples: list[Sample] = []
        self.done = 0
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        rss = int(self.process.memory_info().rss)
        self.samples.append(Sample(time.perf_counter() - self.started, rss, self.done))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def on_progress(self, progress: Progress) -> None:
        self.done = progress.done

    def at(self, done: int) -> Sample:
        """The first sample taken once ``done`` documents were done (the last one if never)."""
        return next((s for s in self.samples if s.done >= done), self.samples[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--model", default="use-multilingual-v3")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fengchao-bench-") as tmp:
        corpus = Path(tmp) / "short_news.jsonl"
        started = time.perf_counter()
        write_corpus(corpus, args.docs)
        print(
            f"  corpus: {args.docs:,} items, {corpus.stat().st_size / MB:.1f} MB written in"
            f" {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        database = Database.start(Settings(data_dir=Path(tmp), database_schema="bench"))
        try:
            embeddings = get_embeddings(args.model)
            embeddings.embed_documents(["预热", "warm-up"])  # the model loaded before measuring
            registry = KnowledgeBaseRegistry(database)
            dims = int(getattr(embeddings, "dimensions", 0))
            kb = registry.create(KB_ID, embedding_model=args.model, dims=dims)
            with RssSampler() as sampler:
                sampler.sample()
                report = ingest(
                    [corpus],
                    database=database,
                    knowledge_base=kb,
                    embeddings=embeddings,
                    on_progress=sampler.on_progress,
                )
        finally:
            database.close()
    print_results(args, sampler, report.documents_read, report.chunks_written, report.seconds)
    print(f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)")


def print_results(
    args: argparse.Namespace, sampler: RssSampler, documents: int, chunks: int, seconds: float
) -> None:
    samples = sampler.samples
    warm_up = sampler.at(min(WARM_UP, documents // 4))
    end = samples[-1]
    peak = max(samples, key=lambda s: s.rss)
    growth = (end.rss - warm_up.rss) / MB
    print(
        f"\n{documents:,} documents, {chunks:,} chunks, model {args.model}: {seconds:.1f} s,"
        f" {documents / seconds:.1f} documents/s, {len(samples)} RSS samples"
    )
    print(f"{'point':24} {'docs done':>10} {'RSS MB':>8}")
    rows = [
        ("start (model loaded)", samples[0]),
        (f"after warm-up ({warm_up.done:,})", warm_up),
        *((f"{q}%", sampler.at(documents * q // 100)) for q in (25, 50, 75)),
        ("100% (end)", end),
        (f"peak (at {peak.seconds:.0f} s)", peak),
    ]
    for name, sample in rows:
        print(f"{name:24} {sample.done:10,} {sample.rss / MB:8.1f}")
    verdict = "PASS" if growth < GROWTH_TARGET_MB else "MISS"
    print(
        f"growth warm-up -> end: {growth:+.1f} MB (target < {GROWTH_TARGET_MB:.0f} MB: {verdict});"
        f" peak over warm-up {(peak.rss - warm_up.rss) / MB:+.1f} MB"
    )


if __name__ == "__main__":
    main()
