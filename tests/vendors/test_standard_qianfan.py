"""langchain-tests' standard suites for the Qianfan chat model (against the fake)."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.qianfan import ChatQianfan
from fengchao_chains.testing.fakes.qianfan import FakeQianfan
from tests.vendors.standard import shared_fake


class TestQianfanUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatQianfan]:
        return ChatQianfan

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "completions_pro", "api_key": "qf-unit-ak", "secret_key": "qf-unit-sk"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {
                "QIANFAN_AK": "qf-env-ak",
                "QIANFAN_SK": "qf-env-sk",
                "QIANFAN_BASE_URL": "http://example.invalid",
            },
            {"model": "completions_pro"},
            {
                "api_key": "qf-env-ak",
                "secret_key": "qf-env-sk",
                "base_url": "http://example.invalid",
            },
        )


class TestQianfanIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatQianfan]:
        return ChatQianfan

    @property
    def chat_model_params(self) -> dict[str, Any]:
        _, url = shared_fake("qianfan", FakeQianfan)
        return {
            "model": "completions_pro",
            "api_key": "qf-ak",
            "secret_key": "qf-sk",
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
        return "ernie_bot_8k"  # the endpoint is the model: the override changes the path
