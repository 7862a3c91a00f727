"""The model catalog and the factory from model id to a configured LangChain ChatModel."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fengchao_chains.catalog.cards import LOCAL, ONLINE, ModelCard
from fengchao_chains.catalog.loader import Catalog, load_catalog
from fengchao_chains.llms.registry import get_vendor_factory
from fengchao_chains.settings import Settings, get_settings

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = [
    "LOCAL",
    "ONLINE",
    "Catalog",
    "ModelCard",
    "get_catalog",
    "get_chat_model",
    "load_catalog",
    "reload_catalogs",
]


def get_catalog(settings: Settings | None = None) -> Catalog:
    """The catalog for ``settings`` (default: the process settings), loaded once per set of
    catalog files; ``reload_catalogs()`` forgets loaded catalogs after the files change."""
    return _load_cached(tuple((settings or get_settings()).catalog_files))


@lru_cache(maxsize=8)
def _load_cached(files: tuple[Path, ...]) -> Catalog:
    return load_catalog(files)


def reload_catalogs() -> None:
    _load_cached.cache_clear()


def get_chat_model(
    model_id: str,
    *,
    catalog: Catalog | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> BaseChatModel:
    """A configured ChatModel for a catalog model id.

    ``overrides`` are the standard ChatModel parameters (``temperature``, ``max_tokens``,
    ``timeout``, ``api_key``, ``base_url``, ...) and win over the catalog and settings.
    Raises :class:`~fengchao_chains.errors.UnknownModelError` (with close matches) for an id
    that is not in the catalog, and :class:`~fengchao_chains.errors.ModelNotAvailableError`
    when the model's vendor has no implementation installed.
    """
    settings = settings or get_settings()
    card = (catalog or get_catalog(settings))[model_id]
    factory = get_vendor_factory(card.vendor, card.id)
    return factory(card, settings, **overrides)
