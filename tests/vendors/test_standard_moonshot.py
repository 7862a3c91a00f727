"""langchain-tests' standard suites for the Moonshot chat model, against the fake Moonshot.

Moonshot reads documents, so the PDF-input test runs too: it downloads a sample PDF from the
internet, which these tests never reach, so that one download is served from a local PDF.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_tests.integration_tests import chat_models as integration_module

from tests.vendors.harness import MOONSHOT
from tests.vendors.standard import VendorIntegrationTests, VendorUnitTests, shared_fake

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
    fake, _ = shared_fake(MOONSHOT)
    uploads = [r for r in fake.requests if r.get("method") == "POST" and "/files" in r["path"]]
    assert {r["filename"] for r in uploads[-2:]} == {"document.pdf", "test_file.pdf"}


class TestMoonshotUnit(VendorUnitTests):
    harness = MOONSHOT
    env = (
        {"MOONSHOT_API_KEY": "sk-env", "MOONSHOT_BASE_URL": "http://example.invalid/v1"},
        {"model": "moonshot-v1-8k"},
        {"api_key": "sk-env", "base_url": "http://example.invalid/v1"},
    )


class TestMoonshotIntegration(VendorIntegrationTests):
    harness = MOONSHOT
    override_model = "moonshot-v1-32k"

    @property
    def supports_pdf_inputs(self) -> bool:
        return True
