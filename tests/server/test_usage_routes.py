"""``GET /aigc/usage``, ``/aigc/usage/series`` and the ``/usage`` page on a started app:
a key sees its own usage, an admin key every key's; 401 without a token, 445 for bad
parameters, 403 for another key's usage; the page sends browsers to /login first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from fengchao_chains.gateway.auth import AUTH_COOKIE, issue_token
from tests.gateway.test_usage_reports import event, insert_usage
from tests.server.conftest import Server

T0 = datetime(2026, 3, 2, 10, 15, tzinfo=UTC)
RANGE = {"since": "2026-03-01", "until": "2026-03-02"}


def api_key_of(token: str) -> str:
    key: str = jwt.decode(token, options={"verify_signature": False})["api_key"]
    return key


@pytest.fixture
def usage(server: Server) -> dict[str, str]:
    """Rows for the two keys of the server fixture: first 2 GPT calls (USD) and a GLM call
    (CNY), second 1 GLM call; one more call of the first key the day after the range."""
    first, second = api_key_of(server.token), api_key_of(server.other_token)
    with server.runtime.database.pool.connection() as conn:
        insert_usage(
            conn,
            [
                event(api_key=first, prompt=10, completion=20, cost="0.0012"),
                event(api_key=first, prompt=5, completion=5, cost="0.0004", status="aborted"),
                event(
                    api_key=first, model="glm-4", unit="CNY", prompt=7, completion=3, cost="0.01"
                ),
                event(
                    api_key=second, model="glm-4", unit="CNY", prompt=1, completion=2, cost="0.5"
                ),
                event(api_key=first, ended_at=T0 + timedelta(days=1), prompt=100, completion=100),
            ],
        )
    return {"first": first, "second": second}


@pytest.fixture
def admin_token(server: Server) -> str:
    issued = server.runtime.keys.create("operator", admin=True)
    return issue_token(issued.api_key, issued.secret_key, 600)


def get(server: Server, path: str, token: str | None, **params: str) -> Any:
    headers = {"Authorization": token} if token else {}
    return server.client.get(path, params=params, headers=headers)


def rows_of(response: Any) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["msg"]) == (200, "执行成功")
    return {row["group"]: row for row in body["data"]["rows"]}


# --------------------------------------------------------------------------- who sees ----
def test_a_key_sees_its_own_usage_only(server: Server, usage: dict[str, str]) -> None:
    rows = rows_of(get(server, "/aigc/usage", server.token, group_by="key", **RANGE))
    assert list(rows) == [usage["first"]]
    mine = rows[usage["first"]]
    assert (mine["requests"], mine["aborted"], mine["total_tokens"]) == (3, 1, 50)
    assert mine["cost"] == {"CNY": 0.01, "USD": 0.0016}
    by_model = rows_of(get(server, "/aigc/usage", server.other_token, **RANGE))
    assert list(by_model) == ["glm-4"]
    assert by_model["glm-4"]["requests"] == 1 and by_model["glm-4"]["cost"] == {"CNY": 0.5}


def test_another_keys_usage_is_403_for_a_non_admin(server: Server, usage: dict[str, str]) -> None:
    response = get(server, "/aigc/usage", server.token, key=usage["second"], **RANGE)
    assert response.status_code == 403
    assert response.json() == {
        "status": 403,
        "msg": "a key sees only its own usage (an admin key sees every key's)",
    }
    own = get(server, "/aigc/usage", server.token, key=usage["first"], **RANGE)
    assert own.json()["data"]["total"]["requests"] == 3
    series = get(server, "/aigc/usage/series", server.token, key=usage["second"], **RANGE)
    assert series.status_code == 403


def test_an_admin_key_sees_every_key_and_filters_by_one(
    server: Server, usage: dict[str, str], admin_token: str
) -> None:
    rows = rows_of(get(server, "/aigc/usage", admin_token, group_by="key", **RANGE))
    assert list(rows) == [usage["first"], usage["second"]]
    assert rows[usage["first"]]["name"] == "first" and rows[usage["second"]]["name"] == "second"
    total = get(server, "/aigc/usage", admin_token, **RANGE).json()["data"]["total"]
    assert (total["requests"], total["total_tokens"]) == (4, 53)
    assert total["cost"] == {"CNY": 0.51, "USD": 0.0016}
    second = get(server, "/aigc/usage", admin_token, key=usage["second"], **RANGE).json()
    assert second["data"]["total"]["requests"] == 1
    assert second["data"]["filters"] == {"key": usage["second"]}


def test_the_login_cookie_works_as_the_token(server: Server, usage: dict[str, str]) -> None:
    server.client.cookies.set(AUTH_COOKIE, server.token)
    try:
        response = server.client.get("/aigc/usage", params=RANGE)
    finally:
        server.client.cookies.clear()
    assert response.json()["data"]["total"]["requests"] == 3


# --------------------------------------------------------------------------- series ------
def test_series_per_model_and_bucket(server: Server, usage: dict[str, str]) -> None:
    response = get(
        server, "/aigc/usage/series", server.token, since="2026-03-01", until="2026-03-03"
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["bucket"] == "day"
    assert data["buckets"] == [
        "2026-03-01T00:00:00Z",
        "2026-03-02T00:00:00Z",
        "2026-03-03T00:00:00Z",
    ]
    by_model = {one["model"]: one for one in data["series"]}
    assert by_model["gpt-3.5-turbo"]["tokens"] == [0, 40, 200]
    assert by_model["gpt-3.5-turbo"]["cost"] == {"USD": [0.0, 0.0016, 0.001]}
    assert by_model["glm-4"] == {
        "model": "glm-4",
        "tokens": [0, 10, 0],
        "cost": {"CNY": [0.0, 0.01, 0.0]},
    }


# --------------------------------------------------------------------------- refusals ----
@pytest.mark.parametrize("path", ["/aigc/usage", "/aigc/usage/series"])
def test_no_token_is_401_json_even_for_a_browser(server: Server, path: str) -> None:
    response = server.client.get(path, headers={"Accept": "text/html"}, follow_redirects=False)
    assert response.status_code == 401
    assert response.json()["status"] == 401
    bad = server.client.get(path, headers={"Authorization": "not-a-token"})
    assert bad.status_code == 401 and bad.json()["msg"].startswith("invalid")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"group_by": "owner"}, "group_by must be one of model, key, day, hour"),
        ({"since": "last week"}, "since must be an ISO date"),
        ({"since": "2026-03-05", "until": "2026-03-01"}, "must be before until"),
        ({"groupby": "key"}, "unknown parameter 'groupby'"),
        ({"front_door": "smtp"}, "front_door must be one of"),
    ],
)
def test_bad_parameters_are_445(server: Server, params: dict[str, str], message: str) -> None:
    response = get(server, "/aigc/usage", server.token, **params)
    assert response.status_code == 445
    body = response.json()
    assert set(body) == {"status", "msg"} and body["status"] == 445
    assert message in body["msg"]


def test_repeated_parameters_and_series_group_by_are_445(server: Server) -> None:
    repeated = server.client.get(
        "/aigc/usage?since=1d&since=2d", headers={"Authorization": server.token}
    )
    assert repeated.status_code == 445 and "more than once" in repeated.json()["msg"]
    grouped = get(server, "/aigc/usage/series", server.token, group_by="day")
    assert grouped.status_code == 445 and "unknown parameter 'group_by'" in grouped.json()["msg"]
    too_long = get(server, "/aigc/usage/series", server.token, since="2020-01-01")
    assert too_long.status_code == 445 and "at most 1000 days" in too_long.json()["msg"]


# --------------------------------------------------------------------------- the page ----
def test_the_page_sends_a_browser_without_a_cookie_to_login(server: Server) -> None:
    response = server.client.get("/usage", headers={"Accept": "text/html"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/usage"


def test_the_page_for_a_signed_in_key(server: Server, admin_token: str) -> None:
    server.client.cookies.set(AUTH_COOKIE, server.token)
    try:
        page = server.client.get("/usage")
        server.client.cookies.set(AUTH_COOKIE, admin_token)
        admin_page = server.client.get("/usage")
    finally:
        server.client.cookies.clear()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert f'<span id="who">{api_key_of(server.token)}</span>' in page.text
    assert '<script src="/usage/static/uPlot.iife.min.js' in page.text
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it
    assert 'name="key"' not in page.text  # the key filter is an admin's
    assert 'name="key"' in admin_page.text and "(admin: every key)" in admin_page.text


def test_static_files_are_a_fixed_list(server: Server) -> None:
    library = server.client.get("/usage/static/uPlot.iife.min.js")
    assert library.status_code == 200
    assert library.headers["content-type"].startswith("text/javascript")
    assert library.text.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    script = server.client.get("/usage/static/usage.js")
    assert "textContent" in script.text
    assert (
        server.client.get("/usage/static/uPlot.min.css")
        .headers["content-type"]
        .startswith("text/css")
    )
    for name in ("uPlot.LICENSE", "..%2Fusage_routes.py", "nothing.js"):
        assert server.client.get(f"/usage/static/{name}").status_code == 404
