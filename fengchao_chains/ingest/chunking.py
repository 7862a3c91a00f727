"""Chinese-aware chunking: split a document into passages that end where sentences end.

LangChain's ``RecursiveCharacterTextSplitter`` does the work: it tries paragraph breaks
first, then line breaks, then sentence ends, then clause breaks, then spaces, and only cuts a
word as a last resort, merging the pieces greedily up to ``chunk_size`` characters. Sentence
punctuation stays on the sentence it ends (``keep_separator="end"``), so a chunk ends with
``。`` rather than the next chunk starting with it. The Chinese sentence ends 。！？ are one
level (with any closing quote or bracket after them, so ``他说：“好。”`` stays whole): a chunk
may end at any of them, not only at the first kind the text happens to contain.

Sizes are in characters. The default 400 keeps a chunk under the 512-token window of the
packaged embedding models (multilingual-e5-small counts about one token per Chinese
character or less, plus its ``passage:`` prefix) while holding a paragraph or two of a news
item: enough context to answer from, small enough that one topic dominates its vector. The
default overlap of 60 (15 %) repeats the last sentence or so of a chunk at the start of the
next, so a fact that straddles a boundary is found from either side. Overlap is made of whole
pieces, never more than ``chunk_overlap`` characters, and is empty when the last sentence is
longer than that.

The title is not prepended: content is stored as written, and the title travels in every
chunk's metadata (where the store and prompts can use it) instead of being repeated in the
text, which would skew the first chunk's vector and full-text rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_text_splitters import RecursiveCharacterTextSplitter

from fengchao_chains.errors import ConfigurationError
from fengchao_chains.ingest.sources import SourceItem

DEFAULT_CHUNK_SIZE = 400
DEFAULT_CHUNK_OVERLAP = 60

SEPARATORS = (
    r"\n\n",
    r"\n",
    r"[。！？][”’」』）》]*",  # Chinese sentence ends, with what closes around them
    r"；",
    r"[.!?][\"')\]]* ",  # English sentence ends
    r"，",
    r", ",
    r" ",
    "",
)
"""Regular expressions, strongest break first."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One passage of a document: ``content[start_index:]`` of the item starts with it."""

    position: int
    """0-based order of the chunk in its document."""
    content: str
    start_index: int
    """Character offset of the chunk in the item's content."""
    metadata: dict[str, Any]
    """The item's metadata plus ``start_index``."""


class Chunker:
    """Splits :class:`SourceItem` s into :class:`Chunk` s of at most ``chunk_size`` characters.

    Raises :class:`ConfigurationError` for a size below 1 or an overlap outside
    ``0 <= chunk_overlap < chunk_size``.
    """

    def __init__(
        self, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    ) -> None:
        if chunk_size < 1:
            raise ConfigurationError(f"chunk size must be at least 1 character, not {chunk_size}")
        if not 0 <= chunk_overlap < chunk_size:
            raise ConfigurationError(
                f"chunk overlap must be from 0 to {chunk_size - 1} characters "
                f"(below the chunk size), not {chunk_overlap}"
            )
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self._splitter = RecursiveCharacterTextSplitter(
            separators=list(SEPARATORS),
            is_separator_regex=True,
            keep_separator="end",
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            strip_whitespace=True,
        )

    def split_text(self, text: str) -> list[tuple[int, str]]:
        """``(start_index, chunk)`` pairs of ``text``, in order; only whitespace between
        chunks is dropped."""
        pieces: list[tuple[int, str]] = []
        search_from = 0
        for piece in self._splitter.split_text(text):
            # The next chunk starts after the previous one and overlaps it by at most
            # chunk_overlap characters, so the first match from there is the chunk itself.
            start = text.find(piece, search_from)
            if start < 0:  # pragma: no cover - the splitter only returns substrings
                raise AssertionError("the splitter returned text that is not in the input")
            pieces.append((start, piece))
            search_from = max(start + 1, start + len(piece) - self.chunk_overlap)
        return pieces

    def split(self, item: SourceItem) -> list[Chunk]:
        """The chunks of one document, each carrying the document's metadata."""
        return [
            Chunk(position, piece, start, {**item.metadata, "start_index": start})
            for position, (start, piece) in enumerate(self.split_text(item.content))
        ]
