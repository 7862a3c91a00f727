"""langchain-tests' standard suites for the Anthropic chat model, against its fake."""

from __future__ import annotations

from tests.vendors.harness import ANTHROPIC
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests


class TestAnthropicUnit(VendorUnitTests):
    harness = ANTHROPIC
    env = (
        {"ANTHROPIC_API_KEY": "sk-ant-env", "ANTHROPIC_BASE_URL": "http://example.invalid"},
        {"model": "claude-3-opus-20240229"},
        {"api_key": "sk-ant-env", "base_url": "http://example.invalid"},
    )


class TestAnthropicIntegration(VendorIntegrationTests):
    harness = ANTHROPIC
    override_model = "claude-3-sonnet-20240229"
