"""langchain-tests' standard suites for the Qianfan chat model, against its fake."""

from __future__ import annotations

from tests.vendors.harness import QIANFAN
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests


class TestQianfanUnit(VendorUnitTests):
    harness = QIANFAN
    env = (
        {
            "QIANFAN_AK": "qf-env-ak",
            "QIANFAN_SK": "qf-env-sk",
            "QIANFAN_BASE_URL": "http://example.invalid",
        },
        {"model": "completions_pro"},
        {"api_key": "qf-env-ak", "secret_key": "qf-env-sk", "base_url": "http://example.invalid"},
    )


class TestQianfanIntegration(VendorIntegrationTests):
    harness = QIANFAN
    override_model = "ernie_bot_8k"  # the endpoint is the model: the override changes the path
