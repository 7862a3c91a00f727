"""Chinese-aware chunking: sentence-aligned chunks, bounded size and overlap, no lost text."""

from __future__ import annotations

import itertools
import random

import pytest

from fengchao_chains.errors import ConfigurationError
from fengchao_chains.ingest import Chunker, SourceItem

SENTENCES = [
    "北京今天发布了新的交通政策。",
    "市民普遍表示欢迎！",
    "这项政策何时生效？",
    "据悉，新政策将从下个月起在全市范围内实施，涉及公交、地铁和出租车等多个方面。",
    "有关部门表示；将持续听取各方意见。",
    "他说：“我们会认真落实。”",
    "专家认为，此举有助于缓解城市拥堵问题，并推动绿色出行！",
]
SENTENCE_ENDS = ("。", "！", "？", "。”")


def chinese_text(count: int, seed: int = 7) -> str:
    """Paragraphs of 3 to 8 sentences: realistic news, deterministic."""
    rng = random.Random(seed)  # noqa: S311 - test data, not a secret
    paragraphs = []
    while count > 0:
        size = min(rng.randint(3, 8), count)
        paragraphs.append("".join(rng.choice(SENTENCES) for _ in range(size)))
        count -= size
    return "\n\n".join(paragraphs)


def assert_covers(text: str, pieces: list[tuple[int, str]], chunker: Chunker) -> None:
    """Every chunk is where it says; consecutive chunks overlap by at most chunk_overlap; every
    non-whitespace character of the text is in some chunk."""
    covered = [False] * len(text)
    previous_end = 0
    for start, piece in pieces:
        assert text[start : start + len(piece)] == piece
        assert 0 < len(piece) <= chunker.chunk_size
        assert previous_end - start <= chunker.chunk_overlap
        for index in range(start, start + len(piece)):
            covered[index] = True
        previous_end = start + len(piece)
    missing = [i for i, seen in enumerate(covered) if not seen and not text[i].isspace()]
    assert missing == []


@pytest.mark.parametrize(("size", "overlap"), [(400, 60), (120, 30), (50, 0), (37, 12)])
def test_chinese_chunks_end_at_sentence_ends_and_lose_nothing(size: int, overlap: int) -> None:
    text = chinese_text(300)
    chunker = Chunker(chunk_size=size, chunk_overlap=overlap)
    pieces = chunker.split_text(text)
    assert_covers(text, pieces, chunker)
    if size >= max(len(s) for s in SENTENCES):  # every sentence fits in a chunk
        assert all(piece.endswith(SENTENCE_ENDS) for _, piece in pieces)
    # the overlap repeats whole sentences when there is room for any
    if overlap >= 30:
        assert any(
            start < previous_start + len(previous)
            for (previous_start, previous), (start, _) in itertools.pairwise(pieces)
        )


def test_a_closing_quote_stays_with_its_sentence() -> None:
    chunker = Chunker(chunk_size=20, chunk_overlap=0)
    text = "他说：“我们会认真落实。”专家认为此举很好！"
    assert [piece for _, piece in chunker.split_text(text)] == [
        "他说：“我们会认真落实。”",
        "专家认为此举很好！",
    ]


def test_text_without_punctuation_is_still_split_and_kept() -> None:
    chunker = Chunker(chunk_size=50, chunk_overlap=10)
    text = "无标点长句" * 100
    pieces = chunker.split_text(text)
    assert len(pieces) > 10
    assert_covers(text, pieces, chunker)


def test_english_and_mixed_text_split_at_sentences() -> None:
    chunker = Chunker(chunk_size=60, chunk_overlap=0)
    text = "The policy starts next month. Citizens welcomed it! 市民表示欢迎。When? Soon."
    pieces = [piece for _, piece in chunker.split_text(text)]
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert all(piece.endswith((".", "!", "?", "。")) for piece in pieces)


def test_split_carries_metadata_positions_and_offsets() -> None:
    text = chinese_text(40)
    item = SourceItem("doc-1", text, {"title": "交通新政", "source": "新华社"}, "news.jsonl:1")
    chunks = Chunker().split(item)
    assert len(chunks) > 1
    assert [chunk.position for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert text[chunk.start_index :].startswith(chunk.content)
        assert chunk.metadata == {
            "title": "交通新政",
            "source": "新华社",
            "start_index": chunk.start_index,
        }
    assert chunks[0].start_index == 0
    assert item.metadata == {"title": "交通新政", "source": "新华社"}  # not modified


def test_short_and_empty_texts() -> None:
    chunker = Chunker()
    assert chunker.split_text("") == []
    assert chunker.split_text("  一句话。  ") == [(2, "一句话。")]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (100, 100), (100, -1)])
def test_impossible_sizes_are_configuration_errors(size: int, overlap: int) -> None:
    with pytest.raises(ConfigurationError, match="chunk"):
        Chunker(chunk_size=size, chunk_overlap=overlap)
