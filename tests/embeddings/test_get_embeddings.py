"""get_embeddings: from a catalog id (or the settings' default) to a configured object."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fengchao_chains.catalog import load_catalog
from fengchao_chains.embeddings import (
    E5Embeddings,
    OpenAICompatibleEmbeddings,
    TEIEmbeddings,
    UnknownEmbeddingModelError,
    USEEmbeddings,
    get_embeddings,
)
from fengchao_chains.errors import ConfigurationError
from fengchao_chains.settings import Settings
from fengchao_chains.testing.fakes.openai_embeddings import FakeOpenAIEmbeddings
from fengchao_chains.testing.fakes.tei import FakeTEI
from tests.embeddings.conftest import OPENAI_KEY


def remote_catalog(tmp_path: Path, tei_url: str, openai_url: str) -> Path:
    path = tmp_path / "embeddings.toml"
    path.write_text(
        f"""
[embeddings."e5-small-tei"]
vendor = "tei"
vendor_model = "intfloat/multilingual-e5-small"
dims = 384
base_url = "{tei_url}"
batch_size = 4
query_prefix = "query: "
document_prefix = "passage: "

[embeddings."e5-openai"]
vendor = "openai_compatible"
vendor_model = "intfloat/multilingual-e5-small"
dims = 384
base_url = "{openai_url}"
api_key_env = "MY_EMBEDDINGS_KEY"
batch_size = 5
timeout = 5
query_prefix = "query: "
document_prefix = "passage: "
""",
        encoding="utf-8",
    )
    return path


def test_default_is_the_settings_embedding_model() -> None:
    embeddings = get_embeddings(settings=Settings())
    assert isinstance(embeddings, E5Embeddings)
    assert (embeddings.model, embeddings.dimensions) == ("multilingual-e5-small", 384)
    other = get_embeddings(settings=Settings(embedding_model="use-multilingual-v3"))
    assert isinstance(other, USEEmbeddings)
    assert (other.model, other.dimensions) == ("use-multilingual-v3", 512)


def test_local_engines_load_once_per_process() -> None:
    from fengchao_chains.embeddings import e5, use

    first = get_embeddings("multilingual-e5-small", Settings())
    first.embed_query("hi")
    get_embeddings("use-multilingual-v3", Settings()).embed_query("hi")
    engine, encoder = e5._engine(), use._load()
    get_embeddings("multilingual-e5-small", Settings()).embed_query("again")
    get_embeddings("use-multilingual-v3", Settings()).embed_query("again")
    assert e5._engine() is engine and use._load() is encoder
    assert e5._load.cache_info().misses == 1 and use._load.cache_info().misses == 1


def test_unknown_id() -> None:
    with pytest.raises(UnknownEmbeddingModelError, match=r"did you mean 'use-multilingual-v3'"):
        get_embeddings("use-multilingual", Settings())


def test_remote_cards_make_configured_objects(
    tmp_path: Path,
    tei: tuple[FakeTEI, str],
    openai_embeddings: tuple[FakeOpenAIEmbeddings, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tei_fake, tei_url = tei
    openai_fake, openai_url = openai_embeddings
    settings = Settings(catalog_files=[remote_catalog(tmp_path, tei_url, openai_url)])
    monkeypatch.setenv("MY_EMBEDDINGS_KEY", OPENAI_KEY)

    on_tei = get_embeddings("e5-small-tei", settings)
    assert isinstance(on_tei, TEIEmbeddings)
    assert (on_tei.model, on_tei.dimensions, on_tei.batch_size) == ("e5-small-tei", 384, 4)
    on_openai = get_embeddings("e5-openai", settings)
    assert isinstance(on_openai, OpenAICompatibleEmbeddings)
    assert (on_openai.timeout, on_openai.batch_size) == (5, 5)

    texts = [f"新闻 {i}" for i in range(10)]
    local = np.array(get_embeddings(settings=settings).embed_documents(texts))
    assert np.allclose(on_tei.embed_documents(texts), local, atol=1e-5)
    assert np.allclose(on_openai.embed_documents(texts), local, atol=1e-5)
    assert (len(tei_fake.requests), len(openai_fake.requests)) == (3, 2)


def test_named_key_variable_must_be_set(tmp_path: Path) -> None:
    catalog = load_catalog([remote_catalog(tmp_path, "http://tei", "http://openai/v1")])
    with pytest.raises(ConfigurationError, match=r"'e5-openai' needs its key in \$MY_EMBEDD"):
        get_embeddings("e5-openai", Settings(), catalog=catalog)
