"""The running services one process shares: settings, catalog, prompt library and database.

The CLI starts a runtime before the web server so configuration and database problems are
reported as one line; a plain ``uvicorn server:app`` starts it in the app's lifespan instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar, cast

from fengchao_chains.catalog import Catalog, get_catalog, get_chat_model
from fengchao_chains.db import Database
from fengchao_chains.errors import ConfigurationError, UnknownModelError
from fengchao_chains.prompts import PromptLibrary, get_prompt_library
from fengchao_chains.settings import Settings

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from fengchao_chains.catalog.cards import EmbeddingCard
    from fengchao_chains.embeddings import CatalogEmbeddings
    from fengchao_chains.gateway.auth import TokenVerifier
    from fengchao_chains.gateway.conversations import ConversationStore
    from fengchao_chains.gateway.keys import KeyStore
    from fengchao_chains.gateway.limits import Limiter
    from fengchao_chains.gateway.sensitive import SensitiveWords
    from fengchao_chains.gateway.tasks import TaskQueue
    from fengchao_chains.gateway.uploads import UploadStore
    from fengchao_chains.gateway.usage import UsageLog
    from fengchao_chains.ingest.sample import SampleNewsLoader

logger = logging.getLogger(__name__)
_Model = TypeVar("_Model")


@dataclass
class Runtime:
    settings: Settings
    catalog: Catalog
    prompts: PromptLibrary
    database: Database
    sample_news: SampleNewsLoader | None = None
    _models: dict[tuple[str, str], Any] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def start(cls, settings: Settings) -> Runtime:
        catalog = get_catalog(settings)  # a broken catalog fails before the database starts
        try:
            catalog[settings.default_model]
        except UnknownModelError as exc:
            raise ConfigurationError(f"FENGCHAO_DEFAULT_MODEL: {exc}") from None
        prompts = get_prompt_library(settings)  # a broken prompt file fails start-up too
        from fengchao_chains.gateway.sensitive import SensitiveWords

        words = SensitiveWords.from_settings(settings)  # and so does a broken word list
        from fengchao_chains.llms._http_clients import set_max_connections

        set_max_connections(settings.vendor_max_connections)
        database = Database.start(settings)
        runtime = cls(settings=settings, catalog=catalog, prompts=prompts, database=database)
        runtime.sensitive_words = words
        return runtime

    def chat_model(self, model_id: str) -> BaseChatModel:
        """The catalog's chat model ``model_id``, built once per runtime and shared by every
        request: building one (settings, credentials, validation, and LangChain's per-object
        caches that a new object fills again) costs more than the rest of a request, so
        each call passes its own sampling (``temperature``, ``max_tokens``, ...) instead."""
        return self._built_once("chat", model_id, lambda: self._gateway_chat_model(model_id))

    def _gateway_chat_model(self, model_id: str) -> BaseChatModel:
        """The catalog's model, set up for relaying: text that arrives together leaves
        together (``stream_coalescing``, for the vendors that stream over our SSE layer)."""
        from fengchao_chains.llms._base import VendorChatModel

        model = get_chat_model(model_id, catalog=self.catalog, settings=self.settings)
        if self.settings.stream_coalescing and isinstance(model, VendorChatModel):
            model.coalesce_stream_text = True
        return model

    def embeddings_model(self, card: EmbeddingCard) -> CatalogEmbeddings:
        """The embedding model of ``card``, built once per runtime and shared by every
        request (a local one loads its weights when built)."""
        from fengchao_chains.embeddings import embeddings_for_card

        return self._built_once("embeddings", card.id, lambda: embeddings_for_card(card))

    def _built_once(self, kind: str, model_id: str, build: Callable[[], _Model]) -> _Model:
        """``build()`` the first time ``kind`` / ``model_id`` is asked for, then the same object
        (two first callers at once may both build; one object is kept)."""
        model = self._models.get((kind, model_id))
        if model is None:
            model = self._models.setdefault((kind, model_id), build())
        return cast(_Model, model)

    # The gateway's services, built on first use (a CLI command needs none of them).

    @cached_property
    def keys(self) -> KeyStore:
        from fengchao_chains.gateway.keys import KeyStore

        return KeyStore(self.database, self.settings)

    @cached_property
    def token_verifier(self) -> TokenVerifier:
        from fengchao_chains.gateway.auth import TokenVerifier

        return TokenVerifier(self.keys)

    @cached_property
    def sensitive_words(self) -> SensitiveWords:
        from fengchao_chains.gateway.sensitive import SensitiveWords

        return SensitiveWords.from_settings(self.settings)

    @cached_property
    def tasks(self) -> TaskQueue:
        from fengchao_chains.gateway.tasks import TaskQueue

        return TaskQueue(self.database, self.settings)

    @cached_property
    def uploads(self) -> UploadStore:
        from fengchao_chains.gateway.uploads import UploadStore

        return UploadStore(self.database, self.settings)

    @cached_property
    def conversations(self) -> ConversationStore:
        from fengchao_chains.gateway.conversations import ConversationStore

        return ConversationStore(self.database, self.settings)

    @cached_property
    def usage(self) -> UsageLog:
        from fengchao_chains.gateway.usage import UsageLog

        return UsageLog(self.database, self.catalog)

    @cached_property
    def limits(self) -> Limiter:
        from fengchao_chains.gateway.limits import Limiter

        return Limiter(self.database, self.settings)

    def reload_prompts(self) -> None:
        """Re-read the prompt files (on SIGHUP); a broken file keeps the current library."""
        try:
            self.prompts.reload()
        except ConfigurationError as exc:
            logger.error("prompt library not reloaded, keeping the current one: %s", exc)
        else:
            logger.info("prompt library reloaded: %d prompts", len(self.prompts))

    def start_sample_news(self) -> None:
        """Make sure ``news_vector_store`` exists (before the server answers), then load the
        packaged sample news into it in the background if it is empty (and the settings
        allow)."""
        from fengchao_chains.ingest.sample import SampleNewsLoader, ensure_news_store

        ensure_news_store(self.database, self.settings)
        if self.settings.load_sample_news and self.sample_news is None:
            self.sample_news = SampleNewsLoader(self.database, self.settings).start()

    async def open_async(self) -> None:
        await self.database.open_async_pool()

    async def aclose(self) -> None:
        """Close everything: the sample news load (off the loop: it finishes its batch), the
        async pool in this loop, then the sync pool and the server."""
        if self.sample_news is not None:
            await asyncio.to_thread(self.sample_news.stop)
        await self.database.close_async_pool()
        self.close()

    def close(self) -> None:
        if self.sample_news is not None:
            self.sample_news.stop()  # after its batch in flight, before the pools close
        self.database.close()
