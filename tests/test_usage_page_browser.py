"""The usage page in a real browser: headless Chromium (Debian's package, driven by
Playwright) against a live ``fengchao serve`` whose usage_events hold known rows.

Unauthenticated, ``/usage`` sends the browser to ``/login`` and back; the page then draws a
tokens chart with one line per model and a cost chart per unit (checked in the canvas
pixels, not only in the legend), and the table shows the exact sums of the key's own rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.clients import Gateway, running_gateway
from tests.gateway.test_usage_reports import event, insert_usage

pytest.importorskip("playwright")

from playwright.sync_api import Browser, Page, expect

from tests.browser import BROWSER_MARKS, browser_fixture, fresh_page, sign_in

GPT, GLM = "gpt-3.5-turbo", "glm-4"
SNEAKY = '<img id="pwned" src=x onerror="document.title=1">'
DAY = datetime(2026, 3, 2, 10, 15, tzinfo=UTC)
RANGE = "since=2026-03-01&until=2026-03-03"

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def gateway(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A server whose key used GPT (USD) on 2 and 3 March, GLM (CNY) and a model with
    markup in its name on 2 March; another key's calls must not show."""
    with running_gateway(postgres_url, tmp_path_factory.mktemp("usage-page")) as started:
        schema = started.env["FENGCHAO_DATABASE_SCHEMA"]
        key = started.api_key
        with psycopg.connect(postgres_url, options=f"-c search_path={schema}") as conn:
            insert_usage(
                conn,
                [
                    event(api_key=key, model=GPT, prompt=120, completion=80, cost="0.0004"),
                    event(api_key=key, model=GPT, prompt=30, completion=20, cost="0.0001",
                          ended_at=DAY + timedelta(days=1), status="error"),
                    event(api_key=key, model=GLM, unit="CNY", prompt=300, completion=100,
                          cost="0.04", ended_at=DAY + timedelta(hours=3)),
                    event(api_key=key, model=SNEAKY, unit="CNY", prompt=1, completion=1,
                          cost="0.000001"),
                    event(api_key="fc-someone-else", model=GPT, prompt=9000, completion=9000),
                ],
            )  # fmt: skip
        yield started


browser = browser_fixture()


@pytest.fixture
def console() -> list[str]:
    """Uncaught errors and console errors (a CSP refusal shows up here)."""
    return []


@pytest.fixture
def page(browser: Browser, console: list[str]) -> Iterator[Page]:
    viewport = {"width": 1200, "height": 900}
    with fresh_page(browser, console, console_errors=True, viewport=viewport) as new_page:
        yield new_page


def sign_in_to(page: Page, gateway: Gateway, path: str) -> None:
    page.goto(f"{gateway.base_url}{path}")
    assert urlsplit(page.url).path == "/login"  # sent to sign in first, and back after
    sign_in(page, gateway)
    page.wait_for_url(f"{gateway.base_url}{path}")
    page.wait_for_selector("body[data-state=ready]")


_DRAWN = """() => Array.from(document.querySelectorAll("figure.chart")).map((figure) => {
  const canvas = figure.querySelector("canvas");
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const lines = Array.from(figure.querySelectorAll(".u-legend .u-series")).slice(1).map((row) => {
    const marker = getComputedStyle(row.querySelector(".u-marker"));
    const rgb = marker.borderColor.match(/\\d+/g).map(Number);
    let count = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      if (pixels[i + 3] > 200 && Math.abs(pixels[i] - rgb[0]) < 8
          && Math.abs(pixels[i + 1] - rgb[1]) < 8 && Math.abs(pixels[i + 2] - rgb[2]) < 8) count++;
    }
    return [row.querySelector(".u-label").textContent, count];
  });
  return [figure.dataset.title, Object.fromEntries(lines)];
})"""


def cells(page: Page, selector: str) -> list[str]:
    texts: list[str] = page.locator(selector).all_inner_texts()
    return texts


def test_login_then_the_charts_and_the_table_show_the_keys_usage(
    page: Page, console: list[str], gateway: Gateway, tmp_path: Path
) -> None:
    sign_in_to(page, gateway, f"/usage?{RANGE}")
    page.screenshot(path=str(tmp_path / "usage.png"), full_page=True)

    drawn: dict[str, dict[str, int]] = dict(page.evaluate(_DRAWN))
    assert list(drawn) == ["Tokens per day", "Cost (CNY) per day", "Cost (USD) per day"]
    tokens = drawn["Tokens per day"]
    assert set(tokens) == {GPT, GLM, SNEAKY}  # the legend lists the key's models
    assert tokens[GPT] > 100 and tokens[GLM] > 100  # and their lines and points are drawn
    assert set(drawn["Cost (CNY) per day"]) == {GLM, SNEAKY}  # units in charts of their own
    assert set(drawn["Cost (USD) per day"]) == {GPT}
    assert drawn["Cost (USD) per day"][GPT] > 100

    header = cells(page, "#table thead th")
    assert header[:4] == ["model", "requests", "errors", "aborted"]
    rows = {cells(page, f"#table tbody tr:nth-child({i}) td")[0]: i for i in (1, 2, 3)}
    assert set(rows) == {GLM, GPT, SNEAKY}
    gpt = cells(page, f"#table tbody tr:nth-child({rows[GPT]}) td")
    assert gpt[:8] == [GPT, "2", "1", "0", "150", "100", "250", "0"]
    assert gpt[8] == "0.0005 USD"
    total = cells(page, "#total td")
    assert total[:7] == ["total", "4", "1", "0", "451", "201", "652"]  # not the other key's
    assert total[8] == "0.040001 CNY + 0.0005 USD"
    assert page.locator("#pwned").count() == 0  # a model name is text, never markup
    assert page.title() == "fengchao · usage"
    assert console == []


def test_the_form_regroups_by_day(page: Page, console: list[str], gateway: Gateway) -> None:
    sign_in_to(page, gateway, f"/usage?{RANGE}")
    page.select_option("select[name=group_by]", "day")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**/usage?since=2026-03-01&until=2026-03-03&group_by=day")
    page.wait_for_selector("body[data-state=ready]")
    assert cells(page, "#table tbody td:first-child") == ["2026-03-02", "2026-03-03"]
    assert cells(page, "#table tbody tr:nth-child(1) td")[1:7] == [
        "3",
        "0",
        "0",
        "421",
        "181",
        "602",
    ]
    assert console == []


def test_a_refused_range_is_shown_as_the_servers_message(
    page: Page, console: list[str], gateway: Gateway
) -> None:
    page.goto(f"{gateway.base_url}/usage?since=2026-03-05&until=2026-03-01")
    sign_in(page, gateway)
    page.wait_for_selector("body[data-state=error]")
    expect(page.locator("#error")).to_contain_text("must be before until")
    assert all("445" in message for message in console)  # only the failed fetch is logged


def test_a_short_range_is_charted_per_hour(
    page: Page, console: list[str], gateway: Gateway
) -> None:
    sign_in_to(page, gateway, "/usage?since=2026-03-02T06:00Z&until=2026-03-02T18:00Z")
    drawn: dict[str, dict[str, int]] = dict(page.evaluate(_DRAWN))
    assert list(drawn) == ["Tokens per hour", "Cost (CNY) per hour", "Cost (USD) per hour"]
    assert drawn["Tokens per hour"][GPT] > 100 and drawn["Tokens per hour"][GLM] > 100
    assert cells(page, "#total td")[6] == "602"  # 2 March only
    assert console == []
