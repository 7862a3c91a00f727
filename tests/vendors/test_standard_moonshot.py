"""langchain-tests' standard suites for the Moonshot chat model, against the fake Moonshot.

Moonshot reads documents, so the PDF-input test runs too: it downloads a sample PDF from the
internet, which these tests never reach, so that one download is served from a local PDF.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.integration_tests import chat_models as integration_module
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.llms.moonshot import ChatMoonshot
from fengchao_chains.testing.fakes.moonshot import FakeMoonshot
from tests.vendors.standard import shared_fake

SAMPLE_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


@pytest.fixture(autouse=True)
def local_sample_pdf(request: pytest.FixtureRequest) -> Iterator[None]:
    """Serve test_pdf_inputs' download locally (everything else is untouched)."""
    if request.node.originalname != "test_pdf_inputs":
        yield
        return
    fetched: list[str] = []

    def get(url: str, **_: Any) -> SimpleNamespace:
        fetched.append(url)
        return SimpleNamespace(content=SAMPLE_PDF)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(integration_module, "httpx", SimpleNamespace(get=get))
        yield
    assert fetched, "the PDF test no longer downloads its sample; drop this fixture"
    fake, _ = shared_fake("moonshot", FakeMoonshot)
    uploads = [r for r in fake.requests if r.get("method") == "POST" and "/files" in r["path"]]
    assert {r["filename"] for r in uploads[-2:]} == {"document.pdf", "test_file.pdf"}


class TestMoonshotUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatMoonshot]:
        return ChatMoonshot

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "moonshot-v1-8k", "api_key": "sk-unit"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"MOONSHOT_API_KEY": "sk-env", "MOONSHOT_BASE_URL": "http://example.invalid/v1"},
            {"model": "moonshot-v1-8k"},
            {"api_key": "sk-env", "base_url": "http://example.invalid/v1"},
        )


class TestMoonshotIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatMoonshot]:
        return ChatMoonshot

    @property
    def chat_model_params(self) -> dict[str, Any]:
        _, url = shared_fake("moonshot", FakeMoonshot)
        return {"model": "moonshot-v1-8k", "api_key": "sk-test", "base_url": f"{url}/v1"}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "moonshot-v1-32k"
