"""langchain-tests' standard suites for Ark's chat model and its bots, against the fake."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.ark import ChatArk, ChatArkBot
from fengchao_chains.testing.fakes.ark import FakeArk
from tests.vendors.standard import shared_fake

ENV = {"ARK_API_KEY": "ark-env", "ARK_BASE_URL": "http://example.invalid/api/v3"}
EXPECTED = {"api_key": "ark-env", "base_url": "http://example.invalid/api/v3"}


def _base_url() -> str:
    _, url = shared_fake("ark", FakeArk)
    return f"{url}/api/v3"


class TestArkUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatArk]:
        return ChatArk

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "ep-20240601123456-abcde"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return ENV, {"model": "ep-20240601123456-abcde"}, EXPECTED


class TestArkBotUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatArkBot]:
        return ChatArkBot

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "bot-20240601123456-xyz12"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return ENV, {"model": "bot-20240601123456-xyz12"}, EXPECTED


class TestArkIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatArk]:
        return ChatArk

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "ep-20240601123456-abcde", "api_key": "sk-test", "base_url": _base_url()}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        return "doubao-pro-32k-240515"


class TestArkBotIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatArkBot]:
        return ChatArkBot

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "bot-20240601123456-xyz12", "api_key": "sk-test", "base_url": _base_url()}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def model_override_value(self) -> str:
        return "bot-20240601123456-other"
