"""Zhipu AI (GLM-4) against the fake Zhipu server: JWT auth and its cache, the wire format,
Zhipu's business error codes, retries and streams."""

from __future__ import annotations

import asyncio
import itertools
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage

from fengchao_chains import get_chat_model
from fengchao_chains.catalog import load_catalog
from fengchao_chains.llms import zhipu
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    CredentialsExpiredError,
    InvalidRequestError,
    QuotaExceededError,
    RateLimitError,
    UpstreamError,
    VendorConnectionError,
    VendorError,
    VendorTimeoutError,
)
from fengchao_chains.llms.zhipu import ChatZhipu, mint_token
from fengchao_chains.settings import load_settings
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.zhipu import FakeZhipu
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.checks import assert_four_modes, assert_no_secret, summed

KEY_ID = "zhipu-test-id"
SECRET = "zhipu-test-secret"
KEY = f"{KEY_ID}.{SECRET}"

# PyJWT warns about Zhipu's 16-byte secrets when these tests check tokens with it.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

ZHIPU_MODELS = [card.id for card in load_catalog().values() if card.vendor == "zhipu"]


@pytest.fixture(scope="module")
def zhipu_server() -> Iterator[tuple[FakeZhipu, str]]:
    fake = FakeZhipu()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def zhipu_fake(zhipu_server: tuple[FakeZhipu, str]) -> Iterator[FakeZhipu]:
    fake, _ = zhipu_server
    fake.clear_faults()
    fake.requests.clear()
    zhipu.TOKENS.clear()
    yield fake
    fake.clear_faults()
    zhipu.TOKENS.clear()


@pytest.fixture
def base_url(zhipu_server: tuple[FakeZhipu, str]) -> str:
    return f"{zhipu_server[1]}/api/paas/v4"


@pytest.fixture
def model(base_url: str, zhipu_fake: FakeZhipu) -> ChatZhipu:
    return ChatZhipu(model="glm-4", api_key=KEY, base_url=base_url, max_retries=2)


def tokens(fake: FakeZhipu) -> list[str]:
    """The JWT of each request the fake received."""
    values = [r["headers"]["authorization"] for r in fake.requests]
    assert all(v.startswith("Bearer ") for v in values)
    return [v.removeprefix("Bearer ") for v in values]


# --------------------------------------------------------------------------- catalog, modes


def test_the_catalog_has_glm_4() -> None:
    assert "glm-4" in ZHIPU_MODELS


@pytest.mark.parametrize("model_id", ZHIPU_MODELS)
async def test_every_catalog_model_in_all_four_modes(
    model_id: str, base_url: str, zhipu_fake: FakeZhipu, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZHIPUAI_API_KEY", KEY)
    monkeypatch.setenv("ZHIPUAI_BASE_URL", base_url)
    chat = get_chat_model(model_id, settings=load_settings())
    assert isinstance(chat, ChatZhipu)
    await assert_four_modes(chat, expected_model=model_id)
    assert zhipu_fake.last_request["body"]["model"] == model_id
    assert zhipu_fake.last_request["path"] == "/api/paas/v4/chat/completions"


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


def test_max_tokens_and_stop_reach_the_vendor(model: ChatZhipu) -> None:
    cut = model.invoke("one two three four five six", max_tokens=3)
    assert cut.response_metadata["finish_reason"] == "length"
    assert cut.usage_metadata is not None and cut.usage_metadata["output_tokens"] == 3
    assert model.invoke("alpha beta gamma", stop=["beta"]).content == "Echo: alpha"


def test_answer_metadata_and_usage(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    answer = model.invoke("你好 world")
    assert answer.content == "Echo: 你好 world"
    assert answer.usage_metadata == {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    request_id = answer.response_metadata["request_id"]
    assert request_id.isdigit() and len(request_id) == 19
    assert answer.id == request_id


def test_stream_carries_usage_exactly_once(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    chunks = list(model.stream("count these words please"))
    assert zhipu_fake.last_request["body"]["stream"] is True
    assert zhipu_fake.last_request["headers"]["accept"] == "text/event-stream"
    assert len([c for c in chunks if c.usage_metadata]) == 1
    total = summed(chunks)
    non_stream = model.invoke("count these words please")
    assert total.content == non_stream.content
    assert total.usage_metadata == non_stream.usage_metadata
    assert total.response_metadata["finish_reason"] == "stop"
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


def test_token_the_vendor_calls_expired_is_reminted_once(
    model: ChatZhipu, zhipu_fake: FakeZhipu, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = itertools.count()
    start = time.time()
    monkeypatch.setattr(zhipu, "_now", lambda: start + next(ticks))
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


def test_wrong_secret_is_refused_and_never_leaks(base_url: str, zhipu_fake: FakeZhipu) -> None:
    secret = "this-is-a-very-wrong-secret"
    chat = ChatZhipu(model="glm-4", api_key=f"{KEY_ID}.{secret}", base_url=base_url)
    with pytest.raises(AuthenticationError) as caught:
        chat.invoke("hi")
    assert not isinstance(caught.value, CredentialsExpiredError)
    assert caught.value.status_code == 401
    assert caught.value.code == "1004"
    assert len(zhipu_fake.requests) == 1
    assert_no_secret(secret, chat, caught.value)
    assert_no_secret(f"{KEY_ID}.{secret}", chat, caught.value)


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
    ("fault", "expected"),
    [
        (Fault.UNAUTHORIZED, (AuthenticationError, "1000", 401)),
        (Fault.CONTEXT_TOO_LONG, (ContextTooLongError, "1261", 400)),
        (Fault.CONTENT_FILTERED, (ContentFilteredError, "1301", 400)),
    ],
)
def test_faults_map_to_the_tree_without_retry(
    model: ChatZhipu,
    zhipu_fake: FakeZhipu,
    fault: Fault,
    expected: tuple[type[VendorError], str, int],
) -> None:
    error, code, status = expected
    zhipu_fake.inject(fault)
    with pytest.raises(error) as caught:
        model.invoke("hi")
    assert caught.value.code == code
    assert caught.value.status_code == status
    assert caught.value.vendor == "zhipu"
    assert len(zhipu_fake.requests) == 1


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


def test_langchain_exception_classes_catch_ours(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    from langchain_core.exceptions import ContextOverflowError, ModelAuthenticationError

    zhipu_fake.inject(Fault.UNAUTHORIZED)
    with pytest.raises(ModelAuthenticationError):
        model.invoke("hi")
    zhipu_fake.inject(Fault.CONTEXT_TOO_LONG)
    with pytest.raises(ContextOverflowError):
        model.invoke("hi")


def test_prompt_over_the_context_window(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    zhipu_fake.context_window = 20
    try:
        with pytest.raises(ContextTooLongError) as caught:
            model.invoke("word " * 50)
    finally:
        zhipu_fake.context_window = 8192
    assert caught.value.code == "1261"


# --------------------------------------------------------------------------- retries


def test_rate_limit_is_retried_honouring_retry_after(
    model: ChatZhipu, zhipu_fake: FakeZhipu
) -> None:
    zhipu_fake.inject(Fault.RATE_LIMITED, times=2, retry_after=0.3)
    started = time.monotonic()
    assert model.invoke("hi").content == "Echo: hi"
    assert time.monotonic() - started >= 0.6
    assert len(zhipu_fake.requests) == 3


def test_rate_limit_gives_up_after_max_retries(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    zhipu_fake.inject(Fault.RATE_LIMITED, times=5, retry_after=0)
    with pytest.raises(RateLimitError) as caught:
        model.invoke("hi")
    assert caught.value.status_code == 429
    assert caught.value.code == "1302"
    assert caught.value.retry_after == 0
    assert len(zhipu_fake.requests) == 3


async def test_server_errors_are_retried_async(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    zhipu_fake.inject(Fault.SERVER_ERROR, times=1)
    assert (await model.ainvoke("hi")).content == "Echo: hi"
    zhipu_fake.inject(Fault.SERVER_ERROR, times=3)
    with pytest.raises(UpstreamError) as caught:
        await model.ainvoke("hi")
    assert caught.value.status_code == 500
    assert caught.value.code == "500"


def test_timeout_is_a_timeout_error(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    zhipu_fake.inject(Fault.SLOW, times=3, delay=1.0)
    quick = model.model_copy(update={"timeout": 0.2, "max_retries": 0})
    with pytest.raises(VendorTimeoutError):
        quick.invoke("hi")


def test_error_mid_stream_is_raised_not_retried(model: ChatZhipu, zhipu_fake: FakeZhipu) -> None:
    zhipu_fake.inject(Fault.MID_STREAM_ERROR)
    received: list[AIMessageChunk] = []
    with pytest.raises(UpstreamError) as caught:
        for chunk in model.stream("one two three four"):
            received.append(chunk)
    assert "".join(str(c.content) for c in received) == "Echo:"
    assert caught.value.code == "500"
    assert caught.value.request_id == received[0].id  # the id of the chunks already seen
    assert len(zhipu_fake.requests) == 1


async def test_cut_stream_is_a_connection_error_not_retried(
    model: ChatZhipu, zhipu_fake: FakeZhipu
) -> None:
    zhipu_fake.inject(Fault.CUT_STREAM)
    with pytest.raises(VendorConnectionError):
        async for _ in model.astream("one two three four"):
            pass
    assert len(zhipu_fake.requests) == 1


async def test_stream_is_retried_before_the_first_byte(
    model: ChatZhipu, zhipu_fake: FakeZhipu
) -> None:
    zhipu_fake.inject(Fault.SERVER_ERROR)
    text = "".join([str(c.content) async for c in model.astream("hi")])
    assert text == "Echo: hi"
    assert len(zhipu_fake.requests) == 2


async def test_stream_refreshes_an_expired_token(
    model: ChatZhipu, zhipu_fake: FakeZhipu, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = itertools.count()
    start = time.time()
    monkeypatch.setattr(zhipu, "_now", lambda: start + next(ticks))
    zhipu_fake.inject(Fault.TOKEN_EXPIRED)
    text = "".join([str(c.content) async for c in model.astream("hi")])
    assert text == "Echo: hi"
    first, second = tokens(zhipu_fake)
    assert first != second
