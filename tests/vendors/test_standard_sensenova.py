"""langchain-tests' standard suites for the SenseNova chat model, against its fake."""

from __future__ import annotations

from tests.vendors.harness import SENSENOVA
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests


class TestSenseNovaUnit(VendorUnitTests):
    harness = SENSENOVA
    env = (
        {
            "SENSENOVA_ACCESS_KEY_ID": "ak-env",
            "SENSENOVA_SECRET_ACCESS_KEY": "sk-env",
            "SENSENOVA_API_BASE": "http://example.invalid/v1",
        },
        {"model": "SenseChat-5"},
        {"api_key": "ak-env", "secret_key": "sk-env", "base_url": "http://example.invalid/v1"},
    )


class TestSenseNovaIntegration(VendorIntegrationTests):
    harness = SENSENOVA
    override_model = "SenseChat-32K"
