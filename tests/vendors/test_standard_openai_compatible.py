"""langchain-tests' standard suites for the OpenAI-compatible chat model."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.openai_compatible import ChatOpenAI, ChatOpenAICompatible
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from tests.vendors.standard import shared_fake


class TestOpenAICompatibleUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatOpenAICompatible]:
        return ChatOpenAICompatible

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "gpt-3.5-turbo"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"OPENAI_API_KEY": "sk-env", "OPENAI_BASE_URL": "http://example.invalid/v1"},
            {"model": "gpt-3.5-turbo"},
            {"api_key": "sk-env", "base_url": "http://example.invalid/v1"},
        )


class TestOpenAIUnit(TestOpenAICompatibleUnit):
    """OpenAI itself: the same protocol under the vendor name ``openai``."""

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI


class TestOpenAICompatibleIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatOpenAICompatible]:
        return ChatOpenAICompatible

    @property
    def chat_model_params(self) -> dict[str, Any]:
        _, url = shared_fake("openai", FakeOpenAI)
        return {"model": "gpt-3.5-turbo", "api_key": "sk-test", "base_url": f"{url}/v1"}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        return "gpt-3.5-turbo-16k"
