"""Load the packaged catalog and apply the operator's catalog files on top of it.

File shape (TOML)::

    [defaults]                    # optional: keys every new model of this file starts from
    modes = ["invoke", "stream"]

    [models."my-model"]           # one table per model id
    vendor = "openai_compatible"
    ...

    [embeddings."my-embedder"]    # one table per embedding model id ([defaults] do not apply)
    vendor = "tei"
    ...

A table for an id that already exists is merged key by key, so an override file can change a
single price. ``enabled = false`` hides a model. Every problem is reported as one line that
names the file, the model and the field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fengchao_chains.catalog.cards import EmbeddingCard, ModelCard
from fengchao_chains.errors import CatalogError, ConfigurationError, UnknownModelError
from fengchao_chains.llms.registry import vendor_names
from fengchao_chains.settings import describe_validation_error

PACKAGED_CATALOG = "models.toml"
_TOP_LEVEL_KEYS = {"defaults", "models", "embeddings"}


def _close_matches(wanted: str, ids: Iterable[str], limit: int = 3) -> list[str]:
    """Ids that look like ``wanted``: same letters in another case first, then similar."""
    by_lower = {known.lower(): known for known in ids}
    exact_but_case = [by_lower[wanted.lower()]] if wanted.lower() in by_lower else []
    similar = get_close_matches(wanted.lower(), list(by_lower), n=limit, cutoff=0.6)
    matches = exact_but_case + [by_lower[s] for s in similar]
    return list(dict.fromkeys(matches))[:limit]


class UnknownEmbeddingModelError(CatalogError, KeyError):
    """An embedding model id that is not in the catalog (a :class:`KeyError`, like
    :class:`~fengchao_chains.errors.UnknownModelError` for chat models)."""

    def __init__(self, model_id: str, close_matches: list[str], known: list[str]) -> None:
        self.model_id = model_id
        self.close_matches = close_matches
        if close_matches:
            hint = f"; did you mean {', '.join(repr(m) for m in close_matches)}?"
        else:
            hint = f" (known: {', '.join(known) or 'none'})"
        super().__init__(f"unknown embedding model {model_id!r}{hint}")

    def __str__(self) -> str:
        return str(self.args[0])


class EmbeddingCatalog(Mapping[str, EmbeddingCard]):
    """The enabled embedding cards, in file order, looked up by id."""

    def __init__(self, cards: Iterable[EmbeddingCard]) -> None:
        self._cards = {card.id: card for card in cards if card.enabled}

    def __getitem__(self, model_id: str) -> EmbeddingCard:
        try:
            return self._cards[model_id]
        except KeyError:
            matches = _close_matches(model_id, self._cards)
            raise UnknownEmbeddingModelError(model_id, matches, list(self._cards)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._cards)

    def __len__(self) -> int:
        return len(self._cards)


class Catalog(Mapping[str, ModelCard]):
    """The enabled chat-model cards, in file order, looked up by id; the embedding models
    are a second mapping, :attr:`embeddings`."""

    def __init__(
        self, cards: Iterable[ModelCard], embeddings: Iterable[EmbeddingCard] = ()
    ) -> None:
        self._cards = {card.id: card for card in cards if card.enabled}
        self.embeddings = EmbeddingCatalog(embeddings)

    def __getitem__(self, model_id: str) -> ModelCard:
        try:
            return self._cards[model_id]
        except KeyError:
            raise UnknownModelError(model_id, self.close_matches(model_id)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._cards)

    def __len__(self) -> int:
        return len(self._cards)

    def close_matches(self, model_id: str, limit: int = 3) -> list[str]:
        """Ids that look like ``model_id``: same letters in another case first, then similar."""
        return _close_matches(model_id, self._cards, limit)


def load_catalog(extra_files: Iterable[Path] = ()) -> Catalog:
    """The packaged catalog with ``extra_files`` applied in order."""
    packaged = resources.files("fengchao_chains.catalog").joinpath(PACKAGED_CATALOG)
    merger = _Merger(known_vendors=vendor_names())
    merger.apply(f"packaged catalog {PACKAGED_CATALOG}", packaged.read_text("utf-8"))
    for path in extra_files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigurationError(f"catalog file {path} cannot be read: {reason}") from None
        merger.apply(f"catalog file {path}", text)
    return Catalog(merger.cards.values(), merger.embedding_cards.values())


@dataclass
class _Merger:
    """Raw fields and validated cards so far; each file re-validates every card it touches,
    so an error names the file that caused it."""

    known_vendors: set[str]
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    cards: dict[str, ModelCard] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    embedding_fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    embedding_cards: dict[str, EmbeddingCard] = field(default_factory=dict)

    def apply(self, source: str, text: str) -> None:
        defaults, models, embeddings = _parse(source, text)
        self.defaults = {**self.defaults, **defaults}  # later files inherit earlier defaults
        for model_id, entry in models.items():
            base = self.fields.get(model_id, self.defaults)  # an existing id merges key by key
            self.fields[model_id] = {**base, **entry, "id": model_id}
            self.cards[model_id] = self._validate(model_id, source)
        for model_id, entry in embeddings.items():
            base = self.embedding_fields.get(model_id, {})
            self.embedding_fields[model_id] = {**base, **entry, "id": model_id}
            self.embedding_cards[model_id] = self._validate_embedding(model_id, source)

    def _validate_embedding(self, model_id: str, source: str) -> EmbeddingCard:
        try:
            return EmbeddingCard.model_validate(self.embedding_fields[model_id])
        except ValidationError as exc:
            message = describe_validation_error(exc, f"{source}: embeddings.{model_id}")
            raise ConfigurationError(message) from None

    def _validate(self, model_id: str, source: str) -> ModelCard:
        try:
            card = ModelCard.model_validate(self.fields[model_id])
        except ValidationError as exc:
            message = describe_validation_error(exc, f"{source}: models.{model_id}")
            raise ConfigurationError(message) from None
        if card.vendor not in self.known_vendors:
            raise ConfigurationError(
                f"{source}: models.{model_id}.vendor: unknown vendor {card.vendor!r}"
                f" (known: {', '.join(sorted(self.known_vendors))})"
            )
        return card


Tables = dict[str, dict[str, Any]]


def _parse(source: str, text: str) -> tuple[dict[str, Any], Tables, Tables]:
    """One file's ``[defaults]``, its ``[models."<id>"]`` and ``[embeddings."<id>"]`` tables."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source} is not valid TOML: {exc}") from None
    unknown = set(document) - _TOP_LEVEL_KEYS
    if unknown:
        raise ConfigurationError(
            f"{source}: unknown top-level key {sorted(unknown)[0]!r} (expected [defaults],"
            ' [models."<id>"] and [embeddings."<id>"] tables)'
        )
    defaults = document.get("defaults", {})
    models = document.get("models", {})
    embeddings = document.get("embeddings", {})
    if not isinstance(defaults, dict) or not isinstance(models, dict):
        raise ConfigurationError(f"{source}: [defaults] and [models] must be tables")
    if not isinstance(embeddings, dict):
        raise ConfigurationError(f"{source}: [embeddings] must be a table")
    for kind, tables in (("models", models), ("embeddings", embeddings)):
        for model_id, entry in tables.items():
            if not isinstance(entry, dict):
                raise ConfigurationError(f"{source}: {kind}.{model_id} must be a table")
    return defaults, models, embeddings
