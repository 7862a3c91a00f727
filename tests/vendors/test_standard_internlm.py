"""langchain-tests' standard suites for the InternLM puyu chat model (against the fake)."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.internlm import ChatInternLM
from fengchao_chains.testing.fakes.internlm import FakeInternLM
from tests.vendors.standard import shared_fake


class TestInternLMUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatInternLM]:
        return ChatInternLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "ChatPJLM-latest"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {
                "INTERNLM_API_KEY": "puyu-env-token",
                "INTERNLM_BASE_URL": "http://example.invalid/puyu/api/v1",
            },
            {"model": "ChatPJLM-latest"},
            {"api_key": "puyu-env-token", "base_url": "http://example.invalid/puyu/api/v1"},
        )


class TestInternLMIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatInternLM]:
        return ChatInternLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        _, url = shared_fake("internlm", FakeInternLM)
        return {
            "model": "ChatPJLM-latest",
            "api_key": "puyu-test-token",
            "base_url": f"{url}/puyu/api/v1",
        }

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        return "ChatPJLM-0.2"
