"""``GET /aigc/token``, ``/login`` and ``/logout`` against real keys in PostgreSQL: the token
round trip, bad credentials, the browser's cookie flow, open redirects refused, and the
secret kept out of responses and uvicorn's access log (served for real on loopback)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from fengchao_chains.gateway.auth import AUTH_COOKIE
from fengchao_chains.gateway.keys import IssuedKey, KeyStore
from fengchao_chains.server.auth_routes import SecretQueryFilter, local_path
from fengchao_chains.settings import Settings
from fengchao_chains.testing.serve import serve_in_thread
from tests.gateway.test_auth import protected_app


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(protected_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def issued(client: TestClient, settings: Settings) -> IssuedKey:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return KeyStore(runtime.database, settings).create("routes")


# --------------------------------------------------------------------------- /aigc/token -
def test_token_round_trip(client: TestClient, issued: IssuedKey, settings: Settings) -> None:
    response = client.get(
        "/aigc/token", params={"api_key": issued.api_key, "secret_key": issued.secret_key}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "msg", "token"}
    assert (body["status"], body["msg"]) == (200, "执行成功")
    assert issued.secret_key not in response.text
    token = body["token"]
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"}
    claims = jwt.decode(token, issued.secret_key, algorithms=["HS256"])
    assert list(claims) == ["api_key", "exp", "timestamp"]
    assert claims["api_key"] == issued.api_key
    assert claims["exp"] - claims["timestamp"] == settings.token_ttl_seconds * 1000
    assert abs(claims["timestamp"] - time.time() * 1000) < 60_000  # milliseconds
    whoami = client.get("/whoami", headers={"Authorization": token})
    assert whoami.json() == {"api_key": issued.api_key}
    slash = client.get(
        "/aigc/token/", params={"api_key": issued.api_key, "secret_key": issued.secret_key}
    )
    assert slash.status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"api_key": "KEY", "secret_key": "wrong-secret"},
        {"api_key": "fc-000000000000000000000000", "secret_key": "SECRET"},
        {"api_key": "KEY"},
        {"secret_key": "SECRET"},
        {},
        {"api_key": "", "secret_key": ""},
    ],
)
def test_bad_credentials_get_401_json(
    client: TestClient, issued: IssuedKey, params: dict[str, str]
) -> None:
    real = {"KEY": issued.api_key, "SECRET": issued.secret_key}
    query = {name: real.get(value, value) for name, value in params.items()}
    response = client.get("/aigc/token", params=query)
    assert response.status_code == 401
    assert response.json() == {"status": 401, "msg": "invalid api_key or secret_key"}


def test_a_revoked_key_gets_no_token(
    client: TestClient, issued: IssuedKey, settings: Settings
) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    KeyStore(runtime.database, settings).revoke(issued.api_key)
    params = {"api_key": issued.api_key, "secret_key": issued.secret_key}
    assert client.get("/aigc/token", params=params).status_code == 401


# --------------------------------------------------------------------------- browsers ----
def test_login_form_escapes_next(client: TestClient) -> None:
    page = client.get("/login", params={"next": '/local/playground/?q="><script>'})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert 'name="api_key"' in page.text and 'type="password"' in page.text
    assert "<script>" not in page.text
    assert "/local/playground/?q=&quot;&gt;&lt;script&gt;" in page.text
    assert 'value="/"' in client.get("/login", params={"next": "https://evil.example"}).text


def test_login_sets_the_cookie_that_authenticates_and_logout_clears_it(
    client: TestClient, issued: IssuedKey, settings: Settings
) -> None:
    assert client.get("/whoami").status_code == 401
    form = {"api_key": issued.api_key, "secret_key": issued.secret_key, "next": "/whoami"}
    response = client.post("/login", data=form, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/whoami"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{AUTH_COOKIE}=")
    for attribute in (
        "HttpOnly",
        "SameSite=lax",
        "Path=/",
        f"Max-Age={settings.token_ttl_seconds}",
    ):
        assert attribute.lower() in cookie.lower()
    assert "secure" not in cookie.lower()  # plain http here; set over https
    assert issued.secret_key not in cookie
    token = client.cookies[AUTH_COOKIE]
    assert jwt.decode(token, issued.secret_key, algorithms=["HS256"])["api_key"] == issued.api_key
    assert client.get("/whoami").json() == {"api_key": issued.api_key}  # by the cookie alone
    logout = client.post("/logout", follow_redirects=False)
    assert (logout.status_code, logout.headers["location"]) == (303, "/login")
    assert AUTH_COOKIE not in client.cookies
    assert client.get("/whoami").status_code == 401


def test_a_failed_login_sets_nothing_and_does_not_echo_the_secret(
    client: TestClient, issued: IssuedKey
) -> None:
    form = {"api_key": issued.api_key, "secret_key": "guess-" + issued.secret_key[:8]}
    response = client.post("/login", data=form, follow_redirects=False)
    assert response.status_code == 401
    assert "Wrong api_key or secret_key." in response.text
    assert "set-cookie" not in response.headers
    assert form["secret_key"] not in response.text
    assert client.post("/login", data={}, follow_redirects=False).status_code == 401


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/ok\r\nSet-Cookie: x=1",
        "",
    ],
)
def test_login_never_redirects_off_the_server(
    client: TestClient, issued: IssuedKey, target: str
) -> None:
    form = {"api_key": issued.api_key, "secret_key": issued.secret_key, "next": target}
    response = client.post("/login", data=form, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_local_paths_are_kept() -> None:
    assert local_path("/local/playground/") == "/local/playground/"
    assert local_path("/chat/playground/?a=1&b=%2F") == "/chat/playground/?a=1&b=%2F"
    assert local_path(None) == "/"


def test_next_may_also_come_in_the_query(client: TestClient, issued: IssuedKey) -> None:
    form = {"api_key": issued.api_key, "secret_key": issued.secret_key}
    response = client.post("/login?next=/local/playground/", data=form, follow_redirects=False)
    assert response.headers["location"] == "/local/playground/"


# --------------------------------------------------------------------------- access log --
def test_the_access_log_never_shows_the_secret(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = protected_app(settings)
    served = serve_in_thread(
        app, lifespan="on", start_seconds=60, log_config=None, log_level="info", access_log=True
    )
    with served as base_url:
        runtime = app.state.runtime
        issued = KeyStore(runtime.database, settings).create()
        response = httpx.get(
            f"{base_url}/aigc/token",
            params={"api_key": issued.api_key, "secret_key": issued.secret_key},
        )
        assert response.status_code == 200
    access = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/aigc/token?api_key=" in line and "secret_key=***" in line for line in access)
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert server_side and not any(issued.secret_key in line for line in server_side)


def test_the_filter_masks_secret_key_values_only() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/aigc/token?secret_key=s3cr%26t&api_key=fc-1", "1.1", 200),
        None,
    )  # fmt: skip
    assert SecretQueryFilter().filter(record)
    assert record.getMessage() == (
        '127.0.0.1:5000 - "GET /aigc/token?secret_key=***&api_key=fc-1 HTTP/1.1" 200'
    )
