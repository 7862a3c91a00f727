"""langchain-tests' standard suites for the SenseNova chat model (against the fake)."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.sensenova import ChatSenseNova
from fengchao_chains.testing.fakes.sensenova import TEST_ACCESS_KEY, TEST_SECRET_KEY, FakeSenseNova
from tests.vendors.standard import shared_fake


class TestSenseNovaUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSenseNova]:
        return ChatSenseNova

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "SenseChat-5"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {
                "SENSENOVA_ACCESS_KEY_ID": "ak-env",
                "SENSENOVA_SECRET_ACCESS_KEY": "sk-env",
                "SENSENOVA_API_BASE": "http://example.invalid/v1",
            },
            {"model": "SenseChat-5"},
            {"api_key": "ak-env", "secret_key": "sk-env", "base_url": "http://example.invalid/v1"},
        )


class TestSenseNovaIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatSenseNova]:
        return ChatSenseNova

    @property
    def chat_model_params(self) -> dict[str, Any]:
        _, url = shared_fake("sensenova", FakeSenseNova)
        return {
            "model": "SenseChat-5",
            "api_key": TEST_ACCESS_KEY,
            "secret_key": TEST_SECRET_KEY,
            "base_url": f"{url}/v1",
        }

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        return "SenseChat-32K"
