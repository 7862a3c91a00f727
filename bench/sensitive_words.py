"""Sensitive-word scanning: the Aho-Corasick automaton vs a naive loop over the words.

About ``--megabytes`` MB (UTF-8) of Chinese text is generated from the 2,000 most frequent
words of jieba's dictionary, with punctuation and a newline now and then, and a list of
``--words`` rarer words (from rank 5,000 on, those not already in the text) is compiled into
:class:`SensitiveWords`.  Measured, best of ``--repeat`` runs each:

- **decide** on a text with no list word in it (every word must be tried):
  ``SensitiveWords.check`` vs ``any(w in text for w in words)``;
- **locate** every hit in a text with one list word planted every 2,000 characters:
  ``SensitiveWords.find`` vs a ``str.find`` loop per word;
- for scale: the bare automaton (``ahocorasick`` on the raw text, no normalisation), and a
  stream fed to ``StreamGuard`` in 20-character deltas (what an LLM answer looks like);
- the stream's latency: how many characters the guard holds back after each one-character
  delta over the first ``HELD_SAMPLE`` characters of the clean text, with this list and with
  the packaged one (the guard holds only a suffix that may still grow into a word).

The anchor does less work than ours: it matches raw text only (no NFKC, case or whitespace
folding, no mapping back to the original indices).  The ratio is ours over the anchor in
throughput (higher is better).

    .venv/bin/python -m bench.sensitive_words [--words 10000] [--megabytes 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ahocorasick  # type: ignore[import-not-found]  # noqa: E402

from bench._corpus import vocabulary  # noqa: E402
from fengchao_chains.gateway.sensitive import (  # noqa: E402
    SensitiveContentError,
    SensitiveWords,
)

PUNCTUATION = "，，，。、；！？"
DELTA = 20
HELD_SAMPLE = 20_000


def generate(rng: random.Random, common: list[str], megabytes: float) -> str:
    """Chinese-looking text of about ``megabytes`` MB of UTF-8."""
    parts: list[str] = []
    size = 0
    while size < megabytes * 1_000_000:
        sentence = "".join(rng.choices(common, k=rng.randint(4, 12)))
        sentence += rng.choice(PUNCTUATION) + ("\n" if rng.random() < 0.1 else "")
        parts.append(sentence)
        size += len(sentence.encode())
    return "".join(parts)


def plant(rng: random.Random, text: str, words: list[str], every: int) -> str:
    """``text`` with a random list word inserted about every ``every`` characters."""
    pieces = []
    for start in range(0, len(text), every):
        pieces.append(text[start : start + every])
        pieces.append(rng.choice(words))
    return "".join(pieces)


def best(run: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The fastest of ``repeat`` runs, in seconds, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def naive_find(words: list[str], text: str) -> list[tuple[int, str]]:
    hits = []
    for word in words:
        at = text.find(word)
        while at >= 0:
            hits.append((at, word))
            at = text.find(word, at + 1)
    return hits


def ours_decide(sensitive: SensitiveWords, text: str) -> bool:
    try:
        sensitive.check(text)
    except SensitiveContentError:
        return True
    return False


def ours_stream(sensitive: SensitiveWords, text: str) -> str:
    guard = sensitive.guard(replace=True)
    out = [guard.feed(text[i : i + DELTA]) for i in range(0, len(text), DELTA)]
    out.append(guard.flush())
    return "".join(out)


def held_back(sensitive: SensitiveWords, text: str) -> tuple[int, float]:
    """The most and the mean characters held back after each one-character delta."""
    guard = sensitive.guard(replace=True)
    released = most = total = 0
    for received, char in enumerate(text, start=1):
        released += len(guard.feed(char))
        most = max(most, received - released)
        total += received - released
    return most, total / max(len(text), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=int, default=10_000)
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(20261122)  # noqa: S311 - test data, not a secret
    vocab = vocabulary(5000 + 2 * args.words)
    common = vocab[:2000]
    text = generate(rng, common, args.megabytes)
    # common words next to each other can make a rarer word: the list keeps only words
    # that are not in the clean text
    candidates = ahocorasick.Automaton()
    for word in vocab[5000:]:
        candidates.add_word(word, word)
    candidates.make_automaton()
    joined = {word for _, word in candidates.iter(text)}
    listed = [word for word in vocab[5000:] if word not in joined][: args.words]
    started = time.perf_counter()
    sensitive = SensitiveWords(listed)
    compile_s = time.perf_counter() - started
    bare = ahocorasick.Automaton()
    for word in listed:
        bare.add_word(word, word)
    bare.make_automaton()
    planted = plant(rng, text, listed, 2000)
    mb_clean = len(text.encode()) / 1e6
    mb_planted = len(planted.encode()) / 1e6

    rows = []
    ours_s, decided = best(lambda: ours_decide(sensitive, text), args.repeat)
    naive_s, naive_decided = best(lambda: any(w in text for w in listed), args.repeat)
    assert decided is False and naive_decided is False
    rows.append(("decide (clean text)", mb_clean, ours_s, naive_s))
    ours_s, hits = best(lambda: sensitive.find(planted), args.repeat)
    naive_s, naive_hits = best(lambda: naive_find(listed, planted), args.repeat)
    rows.append(("locate (planted hits)", mb_planted, ours_s, naive_s))
    bare_s, bare_hits = best(lambda: list(bare.iter(planted)), args.repeat)
    stream_s, streamed = best(lambda: ours_stream(sensitive, planted), args.repeat)
    assert streamed == sensitive.mask(planted)

    print(
        f"\n{len(sensitive):,} words (longest {sensitive.longest} characters, compiled in"
        f" {compile_s * 1000:.0f} ms); text {mb_clean:.2f} MB clean, {mb_planted:.2f} MB with"
        f" {len(hits):,} hits (naive loop: {len(naive_hits):,} occurrences,"
        f" bare automaton: {len(bare_hits):,})"
    )
    print(f"{'task':24} {'ours MB/s':>10} {'naive MB/s':>11} {'ours/naive':>11}")
    for task, mb, ours_t, naive_t in rows:
        print(f"{task:24} {mb / ours_t:10.2f} {mb / naive_t:11.3f} {naive_t / ours_t:10.1f}x")
    print(f"bare automaton (no normalisation, planted text): {mb_planted / bare_s:.2f} MB/s")
    print(f"StreamGuard, {DELTA}-character deltas, replace=True: {mb_planted / stream_s:.2f} MB/s")
    sample = text[:HELD_SAMPLE]
    for name, words in [
        (f"{len(sensitive):,}-word list", sensitive),
        ("packaged list", SensitiveWords.packaged()),
    ]:
        most, mean = held_back(words, sample)
        print(
            f"held back, one-character deltas over {len(sample):,} clean characters,"
            f" {name} (longest {words.longest}): at most {most}, mean {mean:.2f}"
        )


if __name__ == "__main__":
    main()
