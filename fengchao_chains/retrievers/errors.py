"""Errors of the knowledge base: each one line a person can act on."""

from __future__ import annotations

from difflib import get_close_matches

from fengchao_chains.errors import FengchaoError


class KnowledgeBaseError(FengchaoError):
    """A knowledge base cannot be created, read or queried as asked."""


class UnknownKnowledgeBaseError(KnowledgeBaseError, KeyError):
    """A knowledge-base id that is not registered (``/aigc`` answers 444)."""

    def __init__(self, kb_id: str, known: list[str]) -> None:
        self.kb_id = kb_id
        matches = get_close_matches(kb_id, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
        super().__init__(f"unknown knowledge base {kb_id!r}{hint} (`fengchao kb list` lists them)")

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0])


class KnowledgeBaseExistsError(KnowledgeBaseError):
    """``create`` of an id that is already registered."""


class EmbeddingMismatchError(KnowledgeBaseError):
    """Vectors from one embedding model compared with a knowledge base built by another."""


class InvalidFilterError(KnowledgeBaseError, ValueError):
    """A metadata filter that uses an unknown operator or a malformed value."""
