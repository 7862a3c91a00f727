"""langchain-tests' standard suites for the Anthropic Messages chat model."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.anthropic import ChatAnthropicMessages
from fengchao_chains.testing.fakes.anthropic import FakeAnthropic
from tests.vendors.standard import shared_fake


class TestAnthropicUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatAnthropicMessages]:
        return ChatAnthropicMessages

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "claude-3-opus-20240229", "api_key": "sk-ant-unit"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"ANTHROPIC_API_KEY": "sk-ant-env", "ANTHROPIC_BASE_URL": "http://example.invalid"},
            {"model": "claude-3-opus-20240229"},
            {"api_key": "sk-ant-env", "base_url": "http://example.invalid"},
        )


class TestAnthropicIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatAnthropicMessages]:
        return ChatAnthropicMessages

    @property
    def chat_model_params(self) -> dict[str, Any]:
        _, url = shared_fake("anthropic", FakeAnthropic)
        return {"model": "claude-3-opus-20240229", "api_key": "sk-ant-test", "base_url": url}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        return "claude-3-sonnet-20240229"
