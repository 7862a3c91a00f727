"""What remote embedding vendors say they counted, for whoever bills the call.

LangChain's ``Embeddings`` returns vectors only, and no callback sees an embeddings call. An
OpenAI-compatible server answers each batch with ``usage.prompt_tokens``; code that bills a
call (the ``/v1/embeddings`` route) wraps it in :func:`collect_vendor_batches` and gets one
:class:`VendorBatch` per batch the vendor answered. The collection is context-local, so
concurrent calls on one shared embeddings object each see only their own batches, and
outside a collection nothing is kept.

    with collect_vendor_batches() as batches:
        vectors = await embeddings.aembed_documents(texts)
    reported = [batch.tokens for batch in batches]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VendorBatch:
    """One batch a remote vendor answered: how many texts, and the input tokens it reported
    (None: it reported none)."""

    texts: int
    tokens: int | None


_BATCHES: ContextVar[list[VendorBatch] | None] = ContextVar(
    "fengchao_embedding_vendor_batches", default=None
)


@contextmanager
def collect_vendor_batches() -> Iterator[list[VendorBatch]]:
    """The batches answered inside the block, in the order they were answered."""
    batches: list[VendorBatch] = []
    reset = _BATCHES.set(batches)
    try:
        yield batches
    finally:
        _BATCHES.reset(reset)


def report_batch(texts: int, answer: Any) -> None:
    """Called by an embeddings class for every batch a vendor answered (``answer``: the
    decoded body; its ``usage.prompt_tokens`` is read if it is a count)."""
    batches = _BATCHES.get()
    if batches is not None:
        batches.append(VendorBatch(texts, _reported_tokens(answer)))


def _reported_tokens(answer: Any) -> int | None:
    usage = answer.get("usage") if isinstance(answer, dict) else None
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and tokens >= 0 else None
