"""Zhipu AI (GLM-4) against the fake Zhipu server: JWT auth and its cache, the wire format,
Zhipu's business error codes (what every vendor shares is in ``test_contract.py``)."""

from __future__ import annotations

import asyncio
import itertools
import time
import warnings
from typing import Any

import httpx
import jwt
import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from fengchao_chains import get_chat_model
from fengchao_chains.catalog import load_catalog
from fengchao_chains.llms import zhipu
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContextTooLongError,
    CredentialsExpiredError,
    InvalidRequestError,
    QuotaExceededError,
    RateLimitError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.llms.zhipu import ChatZhipu, mint_token
from fengchao_chains.settings import load_settings
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.zhipu import FakeZhipu
from tests.vendors.checks import assert_no_secret, summed
from tests.vendors.harness import ZHIPU

KEY_ID = "zhipu-test-id"
SECRET = "zhipu-test-secret"
KEY = f"{KEY_ID}.{SECRET}"

# PyJWT warns about Zhipu's 16-byte secrets when these tests check tokens with it.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

ZHIPU_MODELS = [card.id for card in load_catalog().values() if card.vendor == "zhipu"]


zhipu_fake, base_url, model = ZHIPU.fixtures(fake="zhipu_fake", url="base_url")


def tokens(fake: FakeZhipu) -> list[str]:
    """The JWT of each request the fake received."""
    values = [r["headers"]["authorization"] for r in fake.requests]
    assert all(v.startswith("Bearer ") for v in values)
    return [v.removeprefix("Bearer ") for v in values]


# --------------------------------------------------------------------------- catalog


def test_the_catalog_has_glm_4() -> None:
    assert "glm-4" in ZHIPU_MODELS


def test_factory_defaults_to_zhipus_public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZHIPUAI_API_KEY", KEY)
    chat = get_chat_model("glm-4", settings=load_settings())
    assert isinstance(chat, ChatZhipu)
    assert chat._url("/chat/completions") == (
        "https://open.bigmodel.cn/api/paas/v4/chat/completions"
    )
    assert chat.api_key is not None and chat.api_key.get_secret_value() == KEY


# --------------------------------------------------------------------------- wire format


def test_payload_maps_standard_parameters(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    tuned = model.model_copy(
        update={
            "temperature": 0.3,
            "top_p": 0.7,
            "max_tokens": 50,
            "model_kwargs": {"do_sample": True, "user_id": "user-123456"},
        }
    )
    answer = tuned.invoke(
        [SystemMessage("be brief"), HumanMessage("hi")], stop=["<stop>"], request_id="req-42"
    )
    body = zhipu_fake.last_request["body"]
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.7
    assert body["max_tokens"] == 50
    assert body["stop"] == ["<stop>"]
    assert body["do_sample"] is True
    assert body["user_id"] == "user-123456"
    assert body["request_id"] == "req-42"
    assert body["stream"] is False
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert answer.response_metadata["request_id"] == "req-42"


def test_per_call_model_overrides_the_model(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    answer = model.invoke("hi", model="glm-4-flash")
    assert zhipu_fake.last_request["body"]["model"] == "glm-4-flash"
    assert answer.response_metadata["model_name"] == "glm-4-flash"


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ({"temperature": 0.0}, {"temperature": 0.01, "do_sample": False}),
        ({"temperature": 1.0}, {"temperature": 0.99}),
        ({"top_p": 1.0}, {"top_p": 0.99}),
        ({"top_p": 0.0}, {"top_p": 0.01}),
    ],
)
def test_sampling_is_kept_in_zhipus_open_interval(
    model: ChatZhipu, zhipu_fake: FakeZhipu, given: dict[str, float], sent: dict[str, Any]
) -> None:
    model.model_copy(update=given).invoke("hi")
    body = zhipu_fake.last_request["body"]
    assert {k: body.get(k) for k in sent} == sent
    if "do_sample" not in sent:
        assert "do_sample" not in body


def test_answer_metadata_and_usage(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    answer = model.invoke("你好 world")
    assert answer.content == "Echo: 你好 world"
    assert answer.usage_metadata == {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    request_id = answer.response_metadata["request_id"]
    assert request_id.isdigit() and len(request_id) == 19
    assert answer.id == request_id


def test_stream_asks_for_events(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    total = summed(list(model.stream("count these words please")))
    assert zhipu_fake.last_request["body"]["stream"] is True
    assert zhipu_fake.last_request["headers"]["accept"] == "text/event-stream"
    assert total.response_metadata["request_id"].isdigit()


async def test_concurrent_async_calls(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    answers = await asyncio.gather(*(model.ainvoke(f"n{i}") for i in range(20)))
    assert [a.content for a in answers] == [f"Echo: n{i}" for i in range(20)]
    assert len(set(tokens(zhipu_fake))) == 1  # one cached token served every call


# --------------------------------------------------------------------------- the JWT


def test_requests_carry_zhipus_jwt(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    before_ms = int(time.time() * 1000)
    model.invoke("hi")
    (token,) = tokens(zhipu_fake)
    assert SECRET not in token
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"}
    claims = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False, "enforce_minimum_key_length": False},
    )
    assert claims["api_key"] == KEY_ID
    assert before_ms - 5 <= claims["timestamp"] <= int(time.time() * 1000)  # milliseconds
    assert claims["exp"] - claims["timestamp"] == zhipu.TOKEN_TTL_SECONDS * 1000


def test_token_is_cached_across_calls_modes_and_models(
    model: ChatZhipu, base_url: str, zhipu_fake: FakeZhipu
) -> None:
    model.invoke("a")
    list(model.stream("b"))
    ChatZhipu(model="glm-4", api_key=KEY, base_url=base_url).invoke("c")
    first, *rest = tokens(zhipu_fake)
    assert rest == [first, first]


def test_each_key_has_its_own_token(base_url: str, zhipu_fake: FakeZhipu) -> None:
    other = "other-id.other-secret-value"
    zhipu_fake.api_keys.add(other)
    try:
        ChatZhipu(model="glm-4", api_key=KEY, base_url=base_url).invoke("a")
        ChatZhipu(model="glm-4", api_key=other, base_url=base_url).invoke("b")
    finally:
        zhipu_fake.api_keys.discard(other)
    mine, theirs = tokens(zhipu_fake)
    assert jwt.decode(theirs, options={"verify_signature": False})["api_key"] == "other-id"
    assert mine != theirs


def test_a_fresh_token_is_minted_shortly_before_expiry(
    model: ChatZhipu, zhipu_fake: FakeZhipu, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = time.time()
    monkeypatch.setattr(zhipu, "_now", lambda: start)
    model.invoke("a")
    reuse_until = zhipu.TOKEN_TTL_SECONDS - zhipu.TOKEN_REFRESH_MARGIN
    monkeypatch.setattr(zhipu, "_now", lambda: start + reuse_until - 1)
    model.invoke("b")
    monkeypatch.setattr(zhipu, "_now", lambda: start + reuse_until + 1)
    model.invoke("c")
    first, second, third = tokens(zhipu_fake)
    assert second == first
    assert third != first
    claims = jwt.decode(third, options={"verify_signature": False})
    assert claims["timestamp"] == int((start + reuse_until + 1) * 1000)


@pytest.fixture
def ticking_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each token minted a second after the last, so no two are alike."""
    ticks = itertools.count()
    start = time.time()
    monkeypatch.setattr(zhipu, "_now", lambda: start + next(ticks))


@pytest.mark.usefixtures("ticking_clock")
def test_token_the_vendor_calls_expired_is_reminted_once(
    model: ChatZhipu, zhipu_fake: FakeZhipu
) -> None:
    zhipu_fake.inject(Fault.TOKEN_EXPIRED)
    assert model.invoke("hi").content == "Echo: hi"
    first, second = tokens(zhipu_fake)
    assert first != second


async def test_a_token_still_expired_after_refresh_is_an_error(
    model: ChatZhipu, zhipu_fake: FakeZhipu, monkeypatch: pytest.MonkeyPatch
) -> None:
    skewed = time.time() - 3600  # a clock an hour slow mints tokens already expired
    monkeypatch.setattr(zhipu, "_now", lambda: skewed)
    with pytest.raises(CredentialsExpiredError) as caught:
        await model.ainvoke("hi")
    assert caught.value.status_code == 401
    assert caught.value.code == "1003"
    assert len(zhipu_fake.requests) == 2  # the first try and one refresh, no more


def test_malformed_key_fails_before_any_request(base_url: str, zhipu_fake: FakeZhipu) -> None:
    secret = "no-dot-in-this-very-secret-key"
    chat = ChatZhipu(model="glm-4", api_key=secret, base_url=base_url)
    with pytest.raises(AuthenticationError) as caught:
        chat.invoke("hi")
    assert "<key id>.<secret>" in str(caught.value)
    assert_no_secret(secret, chat, caught.value)
    assert zhipu_fake.requests == []


def test_missing_key_names_the_env_var(base_url: str, zhipu_fake: FakeZhipu) -> None:
    with pytest.raises(AuthenticationError, match="ZHIPUAI_API_KEY"):
        ChatZhipu(model="glm-4", base_url=base_url).invoke("hi")


# --------------------------------------------------------------------------- the fake's auth


def _post(url: str, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    body = {"model": "glm-4", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{url}/chat/completions", json=body, headers=headers)


def _jwt(claims: dict[str, Any], secret: str = SECRET, **header: Any) -> str:
    headers = {"alg": "HS256", "sign_type": "SIGN", **header}
    return jwt.encode(claims, secret, headers=headers)


def test_fake_checks_credentials_like_zhipu(base_url: str, zhipu_fake: FakeZhipu) -> None:
    now_ms = int(time.time() * 1000)
    good = {"api_key": KEY_ID, "exp": now_ms + 60_000, "timestamp": now_ms}
    cases: list[tuple[str | None, str | None]] = [
        (f"Bearer {KEY}", None),  # the official SDK's default: the key itself
        (f"Bearer {_jwt(good)}", None),  # the SDK with token caching
        (_jwt(good), None),  # LangChain's ChatZhipuAI: a bare JWT
        (None, "1001"),
        ("Bearer zhipu-test-id.wrong", "1000"),
        (f"Bearer {_jwt(good, secret='wrong-secret')}", "1004"),
        (f"Bearer {_jwt({**good, 'api_key': 'unknown'})}", "1000"),
        (f"Bearer {_jwt({**good, 'exp': now_ms // 1000 + 60})}", "1003"),  # exp in seconds
        (f"Bearer {_jwt({**good, 'exp': now_ms - 1})}", "1003"),
        (f"Bearer {_jwt(good, sign_type='OTHER')}", "1002"),
        ("Bearer not-a-token", "1002"),
    ]
    for authorization, code in cases:
        response = _post(base_url, authorization)
        if code is None:
            assert response.status_code == 200, (authorization, response.text)
            assert response.json()["choices"][0]["message"]["content"] == "Echo: hi"
        else:
            assert response.status_code == 401, authorization
            assert response.json()["error"]["code"] == code, authorization


def test_tokens_minted_here_pass_an_independent_check() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # minting itself must not warn about the key length
        token = mint_token(KEY, now=1_700_000_000.0)
    claims = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False, "enforce_minimum_key_length": False},
    )
    assert claims == {"api_key": KEY_ID, "exp": 1_700_000_210_000, "timestamp": 1_700_000_000_000}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((429, "1113"), (QuotaExceededError, 1)),  # in arrears: a 429 no retry can fix
        ((429, "1304"), (QuotaExceededError, 1)),
        ((429, "1305"), (RateLimitError, 2)),
        ((429, "1303"), (RateLimitError, 2)),
        ((400, "1211"), (InvalidRequestError, 1)),
        ((400, "1261"), (ContextTooLongError, 1)),
        ((500, "1234"), (UpstreamError, 2)),
        ((401, "1002"), (AuthenticationError, 1)),
        ((403, "1220"), (AuthenticationError, 1)),
    ],
)
def test_zhipu_codes_decide_the_error(
    model: ChatZhipu,
    zhipu_fake: FakeZhipu,
    answer: tuple[int, str],
    expected: tuple[type[VendorError], int],
) -> None:
    (status, code), (error, attempts) = answer, expected
    zhipu_fake.inject_error(status, code, times=3)
    once_more = model.model_copy(update={"max_retries": 1})
    with pytest.raises(error) as caught:
        once_more.invoke("hi")
    assert type(caught.value) is error
    assert caught.value.code == code
    assert caught.value.status_code == status
    assert len(zhipu_fake.requests) == attempts


def test_code_beats_status(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    """Prompt too long with an unusual status is still prompt too long; an unknown code
    falls back to the status."""
    zhipu_fake.inject_error(500, "1261")
    with pytest.raises(ContextTooLongError):
        model.invoke("hi")
    zhipu_fake.inject_error(400, "9999")
    with pytest.raises(InvalidRequestError) as caught:
        model.invoke("hi")
    assert not isinstance(caught.value, ContextTooLongError)


# --------------------------------------------------------------------------- retries


@pytest.mark.usefixtures("ticking_clock")
async def test_stream_refreshes_an_expired_token(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    zhipu_fake.inject(Fault.TOKEN_EXPIRED)
    text = "".join([str(c.content) async for c in model.astream("hi")])
    assert text == "Echo: hi"
    first, second = tokens(zhipu_fake)
    assert first != second
