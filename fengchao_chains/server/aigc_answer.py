"""The SDK's ChatCompletion object, the one shape every 200 chat answer has.

The SDK indexes every key (a missing one is a ``KeyError`` in the user's code) and rejects
``null`` in most (protocol doc section 8.3), so every answer, stream chunk and error status
is built here, complete: ``request_id``, ``created``, ``model``, ``choices`` (may be ``[]``),
``usage`` with ``cost``, ``msg``, ``knowledge``, ``status``, ``search`` and ``agg``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document

from fengchao_chains.callbacks import Bill
from fengchao_chains.catalog import ModelCard
from fengchao_chains.errors import FengchaoError
from fengchao_chains.llms.errors import VendorError, VendorTimeoutError
from fengchao_chains.prompts.library import CREATED_FORMAT
from fengchao_chains.retrievers.pgvector import threshold_from_similarity

OK = "执行成功"
_HEAD_AND_CHOICES = frozenset({"request_id", "created", "model", "choices"})


def knowledge_hit(document: Document) -> dict[str, Any]:
    """One retrieved chunk as the answer's ``knowledge`` item: the text, where it is from,
    and its score on both scales: ``similarity`` (1 - cosine distance) and ``distance``
    (cosine distance x 1000, the request's ``threshold`` scale)."""
    meta = document.metadata
    similarity = meta.get("similarity")
    return {
        "content": document.page_content,
        "title": meta.get("title") or "",
        "url": meta.get("url") or "",
        "source": meta.get("source") or "",
        "knowledge_base": meta.get("knowledge_base") or "",
        "document_id": meta.get("document_id") or "",
        "similarity": similarity,
        "distance": None if similarity is None else round(threshold_from_similarity(similarity), 3),
    }


class Answer:
    """The ChatCompletion objects of one request."""

    def __init__(self, card: ModelCard, request_id: str) -> None:
        self.card = card
        self.request_id = request_id
        self._head: tuple[str, str] = ("", "")  # (created, the serialised head)
        self._tails: tuple[Sequence[Document] | None, str, str] = (None, "", "")
        """(the hits they were made for, what follows ``choices`` with zero usage, what
        follows ``usage``): the serialised ends of a text line and of the closing line."""

    def delta_line(self, content: str, *, index: int, knowledge: Sequence[Document]) -> str:
        """``event_line(self.payload(content, index=index, knowledge=knowledge))`` for a
        stream's text chunk, byte for byte, with what stays the same from chunk to chunk
        (the head, and the zero usage, the knowledge hits and the rest after ``choices``)
        serialised once per stream instead of once per chunk (:meth:`prime`)."""
        self.prime(knowledge)
        choices = (
            f'[{{"index": {index:d}, "message": {{"role": "assistant", "content": '
            f'{json.dumps(content)}}}, "finish_reason": null}}]'
        )  # json.dumps of the one choice, with only the text to encode
        return f'data: {self._head[1]}, "choices": {choices}, {self._tails[1]}\n\n'

    def closing_line(
        self, *, index: int, finish_reason: str, usage: Bill, knowledge: Sequence[Document]
    ) -> str:
        """``event_line(self.payload("", index=..., finish_reason=..., usage=...,
        knowledge=...))`` for a stream's closing chunk, byte for byte, from the parts
        :meth:`prime` serialised while the vendor worked: only the choice and the usage
        are encoded after the answer (docs/benchmarks.md, change 31)."""
        self.prime(knowledge)
        choices = (
            f'[{{"index": {index:d}, "message": {{"role": "assistant", "content": ""}}, '
            f'"finish_reason": {json.dumps(finish_reason)}}}]'
        )
        billed = json.dumps(_usage(usage))
        head, rest = self._head[1], self._tails[2]
        return f'data: {head}, "choices": {choices}, "usage": {billed}, {rest}\n\n'

    def prime(self, knowledge: Sequence[Document]) -> None:
        """Serialise what :meth:`delta_line` and :meth:`closing_line` repeat (if not done
        for this second and these hits): a stream does it while the vendor works on the
        first chunk."""
        created = time.strftime(CREATED_FORMAT)
        if self._head[0] != created:
            head = {"request_id": self.request_id, "created": created, "model": self.card.id}
            self._head = (created, json.dumps(head)[:-1])
        if self._tails[0] is not knowledge:
            whole = self.payload("", knowledge=knowledge)
            tail = {key: value for key, value in whole.items() if key not in _HEAD_AND_CHOICES}
            rest = {key: value for key, value in tail.items() if key != "usage"}
            self._tails = (knowledge, json.dumps(tail)[1:], json.dumps(rest)[1:])

    def payload(
        self,
        content: str | None,
        *,
        index: int = 0,
        finish_reason: str | None = None,
        usage: Bill | None = None,
        status: int = 200,
        msg: str = OK,
        knowledge: Sequence[Document] = (),
    ) -> dict[str, Any]:
        choices = []
        if content is not None:
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                }
            )
        return {
            "request_id": self.request_id,
            "created": time.strftime(CREATED_FORMAT),
            "model": self.card.id,
            "choices": choices,
            "usage": _usage(usage or Bill(0, 0, 0.0)),
            "msg": msg,
            "knowledge": [knowledge_hit(doc) for doc in knowledge],
            "status": status,
            "search": [],
            "agg": [],
        }


def _usage(bill: Bill) -> dict[str, Any]:
    """The answer's ``usage``: the bill's tokens and cost (rounded to 8 places)."""
    prompt_tokens, completion_tokens = bill.prompt_tokens, bill.completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cost": round(bill.cost, 8),
    }


def failure_status(exc: FengchaoError) -> int:
    """A model's failure as the answer's ``status``: 408 a timeout, else the vendor's HTTP
    status, else 400 (the SDK's "access exception")."""
    if isinstance(exc, VendorTimeoutError):
        return 408
    if isinstance(exc, VendorError) and exc.status_code:
        return exc.status_code
    return 400


def event_line(payload: dict[str, Any]) -> str:
    """One stream event: ASCII-escaped JSON on one ``data:`` line (the SDK splits lines with
    ``str.splitlines``, so a raw U+2028 in the text would break it)."""
    return f"data: {json.dumps(payload)}\n\n"
