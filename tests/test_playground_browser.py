"""The LangServe playground in a real browser: headless Chromium (Debian's package, driven
by Playwright, no browser download) against a live ``fengchao serve``.

Unauthenticated, the playground sends the browser to ``/login``; signing in with the key
sets the token cookie and comes back; the form generated from the input schema takes a
question and an online model (the fake OpenAI, so the answer is known), Start streams the
answer into the Output box.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fengchao_chains.testing.fakes._common import echo
from tests.clients import ONLINE_MODEL, Gateway, running_gateway

pytest.importorskip("playwright")

from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import Error as PlaywrightError

from tests.browser import BROWSER_MARKS, browser_fixture, fresh_page, sign_in

QUESTION = "What is the capital of France?"

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def gateway(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(postgres_url, tmp_path_factory.mktemp("browser-gateway")) as started:
        started.openai.reply = echo
        yield started


browser = browser_fixture()


@pytest.fixture
def page_errors() -> list[str]:
    """Uncaught script errors of the page (a form that fails to build shows up here)."""
    return []


@pytest.fixture
def page(browser: Browser, page_errors: list[str]) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page."""
    with fresh_page(browser, page_errors) as new_page:
        yield new_page


def test_login_then_ask_in_the_playground_and_see_the_streamed_answer(
    page: Page, page_errors: list[str], gateway: Gateway, tmp_path: Path
) -> None:
    page.goto(f"{gateway.base_url}/chat/playground/")
    assert urlsplit(page.url).path == "/login"  # sent to sign in first, and back after

    sign_in(page, gateway, gateway.secret_key)
    page.wait_for_url(f"{gateway.base_url}/chat/playground/")
    query = page.locator('[id="#/properties/query-input"]')
    try:
        query.wait_for(state="visible")
    except PlaywrightError as exc:  # the page's script builds the form from the schema
        raise AssertionError(f"the playground did not render its form: {page_errors}") from exc
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    query.fill(QUESTION)
    page.locator('[id="#/properties/model-input"]').fill(ONLINE_MODEL)
    mark = len(gateway.server.lines)
    page.get_by_role("button", name="Start").click()

    answer = page.get_by_text(f"Echo: {QUESTION}", exact=True)
    expect(answer).to_be_visible()
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    assert f"{gateway.base_url}/chat/stream_log" in requests  # the playground streams
    assert gateway.openai.last_request["body"]["messages"][-1]["content"] == QUESTION
    assert gateway.openai.last_request["body"]["stream"] is True
    assert f"usage caller={gateway.api_key} model={ONLINE_MODEL}" in gateway.log_since(mark)
    assert page_errors == []


def test_a_wrong_secret_stays_on_the_login_page(page: Page, gateway: Gateway) -> None:
    page.goto(f"{gateway.base_url}/chat/playground/")
    sign_in(page, gateway, "not-the-secret")
    expect(page.get_by_text("Wrong api_key or secret_key.")).to_be_visible()
    assert urlsplit(page.url).path == "/login"
    assert page.context.cookies() == []
