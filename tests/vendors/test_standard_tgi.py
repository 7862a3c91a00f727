"""langchain-tests' standard suites for the TGI chat model, against the fake TGI."""

from __future__ import annotations

from tests.vendors.harness import TGI
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests


class TestTGIUnit(VendorUnitTests):
    harness = TGI
    env = (
        {"HF_TOKEN": "hf_env_token", "TGI_BASE_URL": "http://example.invalid:8080"},
        {"model": "Qwen/Qwen1.5-0.5B-Chat"},
        {"api_key": "hf_env_token", "base_url": "http://example.invalid:8080"},
    )


class TestTGIIntegration(VendorIntegrationTests):
    harness = TGI
    override_model = None  # a TGI server holds one model
