"""langchain-tests' standard suites for the InternLM (puyu) chat model, against its fake."""

from __future__ import annotations

from tests.vendors.harness import INTERNLM
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests


class TestInternLMUnit(VendorUnitTests):
    harness = INTERNLM
    env = (
        {
            "INTERNLM_API_KEY": "puyu-env-token",
            "INTERNLM_BASE_URL": "http://example.invalid/puyu/api/v1",
        },
        {"model": "ChatPJLM-latest"},
        {"api_key": "puyu-env-token", "base_url": "http://example.invalid/puyu/api/v1"},
    )


class TestInternLMIntegration(VendorIntegrationTests):
    harness = INTERNLM
    override_model = "ChatPJLM-0.2"
