"""langchain-tests' standard suites for the Volcengine MaaS v1 chat model, against the fake."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.volcengine import ChatVolcengineMaas
from fengchao_chains.testing.fakes.volcengine import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    FakeVolcengineMaas,
)
from tests.vendors.standard import shared_fake


class TestVolcengineMaasUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatVolcengineMaas]:
        return ChatVolcengineMaas

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "skylark-lite-public"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {
                "VOLC_ACCESSKEY": "ak-env",
                "VOLC_SECRETKEY": "sk-env",
                "VOLC_MAAS_BASE_URL": "http://example.invalid",
            },
            {"model": "skylark-lite-public"},
            {"api_key": "ak-env", "secret_key": "sk-env", "base_url": "http://example.invalid"},
        )


class TestVolcengineMaasIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatVolcengineMaas]:
        return ChatVolcengineMaas

    @property
    def chat_model_params(self) -> dict[str, Any]:
        _, url = shared_fake("volcengine", FakeVolcengineMaas)
        return {
            "model": "skylark-lite-public",
            "api_key": FAKE_ACCESS_KEY,
            "secret_key": FAKE_SECRET_KEY,
            "base_url": url,
        }

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        return "skylark-plus-public"
