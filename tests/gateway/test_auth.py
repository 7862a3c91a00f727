"""Tokens: the SDK's exact format, verified against real stored keys; every way a token can
be wrong gets an AuthError (401 through the dependency), and the dependency reads the header
(raw or Bearer) or the login cookie."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request

from fengchao_chains.db import Database
from fengchao_chains.gateway.auth import (
    ANONYMOUS,
    AUTH_COOKIE,
    AuthError,
    Caller,
    CallerDep,
    TokenVerifier,
    install_auth_errors,
    issue_token,
    token_from_request,
)
from fengchao_chains.gateway.keys import IssuedKey, KeyStore
from fengchao_chains.runtime import Runtime
from fengchao_chains.server import auth_routes
from fengchao_chains.settings import Settings
from tests.sdk import sdk_python


def now_ms() -> int:
    return int(time.time() * 1000)


def segment(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def keys(database: Database, settings: Settings) -> KeyStore:
    return KeyStore(database, settings)


@pytest.fixture
async def verifier(keys: KeyStore, database: Database) -> AsyncIterator[TokenVerifier]:
    await database.open_async_pool()
    yield TokenVerifier(keys)
    await database.close_async_pool()


@pytest.fixture
def issued(keys: KeyStore) -> IssuedKey:
    return keys.create("tests")


# --------------------------------------------------------------------------- issuing -----
def test_issued_tokens_have_the_sdk_header_and_payload() -> None:
    token = issue_token("AK", "SK" * 16, 1800, now_ms=1795315898338)
    header, payload, _ = token.split(".")
    padded = payload + "=" * (-len(payload) % 4)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"}
    assert base64.urlsafe_b64decode(padded) == (
        b'{"api_key":"AK","exp":1795317698338,"timestamp":1795315898338}'
    )
    assert header == "eyJhbGciOiJIUzI1NiIsInNpZ25fdHlwZSI6IlNJR04iLCJ0eXAiOiJKV1QifQ"


async def test_a_token_signed_by_the_published_sdk_is_accepted(
    verifier: TokenVerifier, issued: IssuedKey
) -> None:
    program = (
        "import sys\nfrom fengchao.utils import create_token\n"
        "print(create_token(sys.argv[1], sys.argv[2]))\n"
    )
    completed = subprocess.run(
        [str(sdk_python()), "-c", program, issued.api_key, issued.secret_key],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    token = completed.stdout.strip()
    assert await verifier.averify(token) == Caller(api_key=issued.api_key)


async def test_a_fresh_token_names_its_caller(verifier: TokenVerifier, issued: IssuedKey) -> None:
    token = issue_token(issued.api_key, issued.secret_key, 60)
    assert await verifier.averify(token) == Caller(api_key=issued.api_key)


# --------------------------------------------------------------------------- negatives ---
def signed(issued: IssuedKey, **claims: Any) -> str:
    payload = {"api_key": issued.api_key, "exp": now_ms() + 60_000, "timestamp": now_ms()}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, issued.secret_key, algorithm="HS256")


async def refused(verifier: TokenVerifier, token: str, message: str) -> AuthError:
    with pytest.raises(AuthError, match=message) as caught:
        await verifier.averify(token)
    assert not token or token not in str(caught.value)
    return caught.value


async def test_expired_millisecond_tokens_are_refused(
    verifier: TokenVerifier, issued: IssuedKey
) -> None:
    token = issue_token(issued.api_key, issued.secret_key, 60, now_ms=now_ms() - 61_000)
    error = await refused(verifier, token, "^token expired")
    assert issued.secret_key not in str(error)


async def test_seconds_exp_is_read_as_seconds(verifier: TokenVerifier, issued: IssuedKey) -> None:
    fresh = signed(issued, exp=int(time.time()) + 60)
    assert await verifier.averify(fresh) == Caller(api_key=issued.api_key)
    await refused(verifier, signed(issued, exp=int(time.time()) - 1), "^token expired")


async def test_tokens_valid_for_more_than_seven_days_are_refused(
    verifier: TokenVerifier, issued: IssuedKey
) -> None:
    week = 7 * 86400 * 1000
    assert await verifier.averify(signed(issued, exp=now_ms() + week - 60_000))
    await refused(verifier, signed(issued, exp=now_ms() + week + 60_000), "7 days ahead")
    await refused(verifier, signed(issued, exp=4102444800000), "7 days ahead")  # year 2100


async def test_missing_or_non_numeric_exp_is_refused(
    verifier: TokenVerifier, issued: IssuedKey
) -> None:
    await refused(verifier, signed(issued, exp=None), "no exp")
    await refused(verifier, signed(issued, exp="4102444800000"), "exp must be a number")
    await refused(verifier, signed(issued, exp=True), "exp must be a number")


async def test_a_forged_signature_is_refused(verifier: TokenVerifier, issued: IssuedKey) -> None:
    forged = issue_token(issued.api_key, "not-the-secret" * 3, 60)
    await refused(verifier, forged, "signature does not match")
    header, _, signature = issue_token(issued.api_key, issued.secret_key, 60).split(".")
    other_payload = segment({"api_key": issued.api_key, "exp": now_ms() + 10**9, "timestamp": 0})
    await refused(verifier, f"{header}.{other_payload}.{signature}", "signature does not match")


async def test_alg_none_and_other_algorithms_are_refused(
    verifier: TokenVerifier, issued: IssuedKey
) -> None:
    claims = {"api_key": issued.api_key, "exp": now_ms() + 60_000, "timestamp": now_ms()}
    unsigned = f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims)}."
    await refused(verifier, unsigned, "algorithm must be HS256")
    library_none = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    await refused(verifier, library_none, "algorithm must be HS256")
    hs512 = jwt.encode(claims, issued.secret_key * 2, algorithm="HS512")
    await refused(verifier, hs512, "algorithm must be HS256")


async def test_unknown_and_revoked_keys_are_refused(
    verifier: TokenVerifier, keys: KeyStore, issued: IssuedKey
) -> None:
    unknown = issue_token("fc-000000000000000000000000", issued.secret_key, 60)
    await refused(verifier, unknown, "unknown or revoked api_key")
    token = issue_token(issued.api_key, issued.secret_key, 60)
    assert await verifier.averify(token) == Caller(api_key=issued.api_key)
    keys.revoke(issued.api_key)
    await refused(verifier, token, "unknown or revoked api_key")


async def test_garbage_and_malformed_claims_are_refused(
    verifier: TokenVerifier, issued: IssuedKey
) -> None:
    await refused(verifier, "garbage", "not a JWT")
    await refused(verifier, "a.b.c", "not a JWT")
    await refused(verifier, "", "not a JWT")
    await refused(verifier, "x" * 5000, "too long")
    await refused(verifier, signed(issued, api_key=12345), "no api_key")
    await refused(verifier, signed(issued, api_key=None), "no api_key")
    await refused(verifier, signed(issued, api_key=""), "no api_key")
    await refused(verifier, segment({"alg": "HS256"}) + "." + "bm90IGpzb24" + ".sig", "not a JWT")


# --------------------------------------------------------------------------- requests ----
def request_with(headers: dict[str, str]) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw})


def test_token_from_the_raw_header_a_bearer_header_or_the_cookie() -> None:
    assert token_from_request(request_with({"Authorization": "eyJ.a.b"})) == "eyJ.a.b"
    assert token_from_request(request_with({"Authorization": "Bearer eyJ.a.b"})) == "eyJ.a.b"
    assert token_from_request(request_with({"Authorization": "bearer  eyJ.a.b "})) == "eyJ.a.b"
    assert token_from_request(request_with({"Cookie": f"{AUTH_COOKIE}=eyJ.c.d"})) == "eyJ.c.d"
    both = {"Authorization": "eyJ.a.b", "Cookie": f"{AUTH_COOKIE}=eyJ.c.d"}
    assert token_from_request(request_with(both)) == "eyJ.a.b"
    assert token_from_request(request_with({})) is None
    assert token_from_request(request_with({"Authorization": "Bearer "})) is None


def protected_app(settings: Settings) -> FastAPI:
    """The auth router, the error handler and one protected route around a real runtime
    (the server's own app is composed elsewhere; this keeps the tests on auth alone)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await asyncio.to_thread(Runtime.start, settings)
        app.state.runtime = runtime
        await runtime.open_async()
        try:
            yield
        finally:
            await runtime.aclose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(auth_routes.router)
    install_auth_errors(app)

    @app.get("/whoami")
    async def whoami(caller: CallerDep) -> dict[str, str]:
        return {"api_key": caller.api_key}

    return app


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(protected_app(settings)) as test_client:
        yield test_client


def test_the_dependency_answers_401_json_for_every_refusal(
    client: TestClient, settings: Settings
) -> None:
    issued = KeyStore(client.app.state.runtime.database, settings).create()  # type: ignore[attr-defined]
    good = issue_token(issued.api_key, issued.secret_key, 60)
    assert client.get("/whoami", headers={"Authorization": good}).json() == {
        "api_key": issued.api_key
    }
    assert client.get("/whoami", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    expired = issue_token(issued.api_key, issued.secret_key, 60, now_ms=now_ms() - 120_000)
    for headers, message in (
        ({}, "missing token"),
        ({"Authorization": "garbage"}, "not a JWT"),
        ({"Authorization": expired}, "token expired"),
        ({"Authorization": issue_token(issued.api_key, "wrong" * 8, 60)}, "signature"),
    ):
        response = client.get("/whoami", headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert set(body) == {"status", "msg"} and body["status"] == 401
        assert message in body["msg"]
        assert issued.secret_key not in response.text


def test_a_browser_without_a_token_is_sent_to_the_login_form(client: TestClient) -> None:
    response = client.get(
        "/whoami?x=1", headers={"Accept": "text/html,*/*"}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/whoami%3Fx%3D1"
    api = client.get("/aigc/whatever", headers={"Accept": "text/html"}, follow_redirects=False)
    assert api.status_code == 404  # not a protected route: no redirect games under /aigc


def test_without_auth_required_no_token_is_anonymous_but_a_bad_token_is_not(
    settings: Settings,
) -> None:
    sandbox = settings.model_copy(update={"auth_required": False})
    with TestClient(protected_app(sandbox)) as client:
        assert client.get("/whoami").json() == {"api_key": ANONYMOUS.api_key}
        assert client.get("/whoami", headers={"Authorization": "garbage"}).status_code == 401


# --------------------------------------------------------------------------- key pairs ---
async def test_the_key_pair_itself_authenticates_with_the_same_refusals(
    verifier: TokenVerifier, keys: KeyStore, issued: IssuedKey
) -> None:
    """What an OpenAI client sends as its api_key: ``<api_key>:<secret_key>``."""
    pair = f"{issued.api_key}:{issued.secret_key}"
    assert await verifier.averify(pair) == Caller(api_key=issued.api_key)
    message = "unknown api_key or wrong secret_key"
    for wrong in (
        f"{issued.api_key}:{issued.secret_key}x",
        f"{issued.api_key}:",
        f":{issued.secret_key}",
        f"fc-000000000000000000000000:{issued.secret_key}",
    ):
        error = await refused(verifier, wrong, message)
        assert issued.secret_key not in str(error)
    keys.revoke(issued.api_key)
    await refused(verifier, pair, message)


async def test_an_admin_key_is_an_admin_caller_by_token_and_by_pair(
    verifier: TokenVerifier, keys: KeyStore
) -> None:
    admin = keys.create("ops", admin=True)
    assert admin.admin and [info.admin for info in keys.list()] == [True]
    expected = Caller(api_key=admin.api_key, admin=True)
    assert await verifier.averify(issue_token(admin.api_key, admin.secret_key, 60)) == expected
    assert await verifier.averify(f"{admin.api_key}:{admin.secret_key}") == expected
    plain = keys.create("app")
    token = issue_token(plain.api_key, plain.secret_key, 60)
    assert (await verifier.averify(token)).admin is False


def test_the_pair_works_as_a_bearer_header(client: TestClient, settings: Settings) -> None:
    issued = KeyStore(client.app.state.runtime.database, settings).create()  # type: ignore[attr-defined]
    pair = f"{issued.api_key}:{issued.secret_key}"
    response = client.get("/whoami", headers={"Authorization": f"Bearer {pair}"})
    assert response.json() == {"api_key": issued.api_key}
    response = client.get("/whoami", headers={"Authorization": f"Bearer {pair[:-1]}"})
    assert response.status_code == 401 and issued.secret_key[:-1] not in response.text
