"""langchain-tests' standard suites for the Volcengine MaaS chat model, against its fake."""

from __future__ import annotations

from tests.vendors.harness import VOLCENGINE
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests


class TestVolcengineMaasUnit(VendorUnitTests):
    harness = VOLCENGINE
    env = (
        {
            "VOLC_ACCESSKEY": "ak-env",
            "VOLC_SECRETKEY": "sk-env",
            "VOLC_MAAS_BASE_URL": "http://example.invalid",
        },
        {"model": "skylark-lite-public"},
        {"api_key": "ak-env", "secret_key": "sk-env", "base_url": "http://example.invalid"},
    )


class TestVolcengineMaasIntegration(VendorIntegrationTests):
    harness = VOLCENGINE
    override_model = "skylark-plus-public"
