"""langchain-tests' standard embeddings suites, for every embeddings class of the project:
the local engines as they are, the remote ones against their fakes."""

from __future__ import annotations

import contextlib
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from fengchao_chains.embeddings.e5 import E5Embeddings
from fengchao_chains.embeddings.openai_compatible import OpenAICompatibleEmbeddings
from fengchao_chains.embeddings.tei import TEIEmbeddings
from fengchao_chains.embeddings.use import USEEmbeddings
from fengchao_chains.testing.fakes.openai_embeddings import FakeOpenAIEmbeddings
from fengchao_chains.testing.fakes.tei import FakeTEI
from fengchao_chains.testing.serve import serve_in_thread
from tests.embeddings.conftest import OPENAI_KEY

_urls: dict[str, str] = {}
_servers = contextlib.ExitStack()


def _served(name: str) -> str:
    """One fake per session (the suites build the model from class properties, so the
    server cannot be a function-scoped fixture)."""
    if name not in _urls:
        app = FakeTEI().app if name == "tei" else FakeOpenAIEmbeddings(api_keys={OPENAI_KEY}).app
        _urls[name] = _servers.enter_context(serve_in_thread(app))
    return _urls[name]


def _tei_params() -> dict[str, Any]:
    return {"model": "e5-tei", "dimensions": 384, "base_url": "http://127.0.0.1:1"}


def _openai_params() -> dict[str, Any]:
    return {
        "model": "e5-openai",
        "vendor_model": "intfloat/multilingual-e5-small",
        "dimensions": 384,
        "base_url": "http://127.0.0.1:1/v1",
        "api_key": OPENAI_KEY,
    }


class TestE5Unit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return E5Embeddings


class TestE5Integration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return E5Embeddings


class TestUSEUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return USEEmbeddings


class TestUSEIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return USEEmbeddings


class TestTEIUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return TEIEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return _tei_params()


class TestTEIIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return TEIEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return _tei_params() | {"base_url": _served("tei")}


class TestOpenAICompatibleUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return OpenAICompatibleEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return _openai_params()


class TestOpenAICompatibleIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return OpenAICompatibleEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return _openai_params() | {"base_url": _served("openai") + "/v1"}
