"""Headless Chromium for the browser tests: Debian's package driven by Playwright (no browser
download), a fresh context per test, and the sign-in form of ``/login``.

Import it after ``pytest.importorskip("playwright")``; mark the module with
:data:`BROWSER_MARKS` (skipped where Chromium is not installed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.clients import Gateway

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)",
    ),
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """The installed Chromium, headless, for as long as the block runs."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def browser_fixture() -> Any:
    """A module-scoped ``browser`` fixture (bind it as ``browser``): one :func:`chromium`
    for the module's tests."""

    @pytest.fixture(scope="module")
    def browser() -> Iterator[Browser]:
        with chromium() as started:
            yield started

    return browser


@contextmanager
def fresh_page(
    browser: Browser, errors: list[str], *, console_errors: bool = False, **context: Any
) -> Iterator[Page]:
    """A page in a new context (no cookies; ``context``: Playwright's options, a viewport),
    whose uncaught script errors, and with ``console_errors`` the console's errors too (a
    CSP refusal shows up there), are appended to ``errors``."""
    new_context = browser.new_context(**context)
    page = new_context.new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda error: errors.append(str(error)))
    if console_errors:
        page.on(
            "console",
            lambda message: errors.append(message.text) if message.type == "error" else None,
        )
    try:
        yield page
    finally:
        new_context.close()


def sign_in(page: Page, gateway: Gateway, secret_key: str | None = None) -> None:
    """Fill in the ``/login`` form the page is on with the gateway's key (and ``secret_key``,
    default its own) and submit it."""
    page.fill("input[name=api_key]", gateway.api_key)
    page.fill("input[name=secret_key]", secret_key or gateway.secret_key)
    page.get_by_role("button", name="Sign in").click()
