"""langchain-tests' standard suites for the Zhipu chat model, against its fake."""

from __future__ import annotations

from tests.vendors.harness import ZHIPU, ZHIPU_KEY
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests


class TestZhipuUnit(VendorUnitTests):
    harness = ZHIPU
    env = (
        {"ZHIPUAI_API_KEY": ZHIPU_KEY, "ZHIPUAI_BASE_URL": "http://example.invalid/api/paas/v4"},
        {"model": "glm-4"},
        {"api_key": ZHIPU_KEY, "base_url": "http://example.invalid/api/paas/v4"},
    )


class TestZhipuIntegration(VendorIntegrationTests):
    harness = ZHIPU
    override_model = "glm-4-flash"
