"""What the knowledge-base benchmarks share: words to generate Chinese text from."""

from __future__ import annotations

from pathlib import Path

import jieba


def vocabulary(size: int) -> list[str]:
    """The ``size`` most frequent multi-character words of jieba's own dictionary."""
    path = Path(jieba.__file__).parent / "dict.txt"
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word, freq, *_ = line.split()
        if len(word) >= 2:
            entries.append((int(freq), word))
    entries.sort(reverse=True)
    return [word for _, word in entries[:size]]
