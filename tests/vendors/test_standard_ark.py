"""langchain-tests' standard suites for Ark's chat model and its bots, against the fake."""

from __future__ import annotations

from tests.vendors.harness import ARK, ARK_BOT_V3
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests

ENV = {"ARK_API_KEY": "ark-env", "ARK_BASE_URL": "http://example.invalid/api/v3"}
EXPECTED = {"api_key": "ark-env", "base_url": "http://example.invalid/api/v3"}


class TestArkUnit(VendorUnitTests):
    harness = ARK
    env = (ENV, {"model": "ep-20240601123456-abcde"}, EXPECTED)


class TestArkBotUnit(VendorUnitTests):
    harness = ARK_BOT_V3
    env = (ENV, {"model": "bot-20240601123456-xyz12"}, EXPECTED)


class TestArkIntegration(VendorIntegrationTests):
    harness = ARK
    override_model = "doubao-pro-32k-240515"


class TestArkBotIntegration(VendorIntegrationTests):
    harness = ARK_BOT_V3
    override_model = "bot-20240601123456-other"
