"""What every embeddings class of the project shares: the catalog id and vector size it
promises, batching, and the check that every vector has that size.

A knowledge base stores vectors of one size for one model id, so a server that quietly
answers with another model (or another ``dimensions``) must fail loudly here, not corrupt
an index that later compares vectors from two spaces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field

from fengchao_chains.errors import FengchaoError


class EmbeddingDimensionsError(FengchaoError, ValueError):
    """An embedding model answered vectors of another size than its catalog card says."""

    def __init__(self, model: str, expected: int, got: int) -> None:
        self.model, self.expected, self.got = model, expected, got
        super().__init__(
            f"embedding model {model!r} returned {got}-dimensional vectors, but its card says"
            f" dims = {expected}: fix `dims` in the catalog (or point the card at the right model)"
        )


class CatalogEmbeddings(BaseModel, Embeddings):
    """Base of the project's embeddings classes (LangChain ``Embeddings``, configured like
    LangChain's partner packages); not used directly."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="forbid")

    model: str = Field(min_length=1)
    """The catalog id of the embedding model: what a knowledge base records."""
    dimensions: int = Field(gt=0)
    """Length of every vector; an answer of another length raises
    :class:`EmbeddingDimensionsError`."""
    batch_size: int = Field(default=32, gt=0)
    """Texts per engine call or request."""

    def _batches(self, texts: Sequence[str]) -> Iterator[list[str]]:
        for start in range(0, len(texts), self.batch_size):
            yield list(texts[start : start + self.batch_size])

    def _checked(self, vectors: Any) -> list[list[float]]:
        """``vectors`` (a numpy array, or lists from JSON) as lists of floats of the
        promised size."""
        if hasattr(vectors, "tolist"):
            rows: list[list[float]] = vectors.tolist()
        else:
            rows = [[float(x) for x in row] for row in vectors]
        for row in rows:
            if len(row) != self.dimensions:
                raise EmbeddingDimensionsError(self.model, self.dimensions, len(row))
        return rows

    # LangChain's four methods, over one pair of hooks every subclass gives.
    def _embed(self, texts: list[str], *, query: bool) -> list[list[float]]:
        """``texts`` embedded as queries or as documents, in order."""
        raise NotImplementedError

    async def _aembed(self, texts: list[str], *, query: bool) -> list[list[float]]:
        raise NotImplementedError

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts, query=False)

    def embed_query(self, text: str) -> list[float]:
        return self._embed([text], query=True)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self._aembed(texts, query=False)

    async def aembed_query(self, text: str) -> list[float]:
        return (await self._aembed([text], query=True))[0]


class InProcessEmbeddings(CatalogEmbeddings):
    """An embedding model run in this process: subclasses give :meth:`_encode`.

    The async methods run the CPU-bound model in a worker thread (``asyncio.to_thread``), one
    hop per batch so a cancelled call stops between batches; an event loop keeps serving, but
    they are no faster than the sync ones.
    """

    def _encode(self, texts: list[str], *, query: bool) -> Any:
        """``texts`` as an ``(n, dimensions)`` array: queries or documents."""
        raise NotImplementedError

    def _embed(self, texts: list[str], *, query: bool) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            vectors.extend(self._checked(self._encode(batch, query=query)))
        return vectors

    async def _aembed(self, texts: list[str], *, query: bool) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            encoded = await asyncio.to_thread(self._encode, batch, query=query)
            vectors.extend(self._checked(encoded))
        return vectors
