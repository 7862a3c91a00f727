"""langchain-tests' standard suites for the Zhipu chat model, against the fake Zhipu."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.zhipu import ChatZhipu
from fengchao_chains.testing.fakes.zhipu import FakeZhipu
from tests.vendors.standard import shared_fake

KEY = "zhipu-test-id.zhipu-test-secret"


class TestZhipuUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatZhipu]:
        return ChatZhipu

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "glm-4", "api_key": KEY}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"ZHIPUAI_API_KEY": KEY, "ZHIPUAI_BASE_URL": "http://example.invalid/api/paas/v4"},
            {"model": "glm-4"},
            {"api_key": KEY, "base_url": "http://example.invalid/api/paas/v4"},
        )


class TestZhipuIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatZhipu]:
        return ChatZhipu

    @property
    def chat_model_params(self) -> dict[str, Any]:
        _, url = shared_fake("zhipu", FakeZhipu)
        return {"model": "glm-4", "api_key": KEY, "base_url": f"{url}/api/paas/v4"}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        return "glm-4-flash"
