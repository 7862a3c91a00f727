"""langchain-tests' standard suites for the OpenAI-compatible chat model, against its fake."""

from __future__ import annotations

from dataclasses import replace

from fengchao_chains.llms.openai_compatible import ChatOpenAI
from tests.vendors.harness import OPENAI
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests


class TestOpenAICompatibleUnit(VendorUnitTests):
    harness = OPENAI
    env = (
        {"OPENAI_API_KEY": "sk-env", "OPENAI_BASE_URL": "http://example.invalid/v1"},
        {"model": "gpt-3.5-turbo"},
        {"api_key": "sk-env", "base_url": "http://example.invalid/v1"},
    )


class TestOpenAIUnit(TestOpenAICompatibleUnit):
    """OpenAI itself: the same protocol under the vendor name ``openai``."""

    harness = replace(OPENAI, chat_class=ChatOpenAI)


class TestOpenAICompatibleIntegration(VendorIntegrationTests):
    """With tool calling and structured output: the fake calls tools deterministically."""

    harness = OPENAI
    override_model = "gpt-3.5-turbo-16k"

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True
