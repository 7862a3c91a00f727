"""The Qianfan chat model against the fake Qianfan server (OAuth tokens + wenxinworkshop);
what every vendor shares is in ``test_contract.py``."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import urllib3
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from fengchao_chains import get_chat_model
from fengchao_chains.catalog import load_catalog
from fengchao_chains.llms._http import ResponseMeta
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
)
from fengchao_chains.llms.qianfan import ChatQianfan, takes_system_prompt
from fengchao_chains.settings import load_settings
from fengchao_chains.testing.fakes._common import Fault, FaultSpec, Reply
from fengchao_chains.testing.fakes.qianfan import CHAT_ROUTE, FakeQianfan
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.checks import assert_no_secret, summed, tuned
from tests.vendors.harness import QIANFAN

AK, SK = "qf-ak", "qf-sk"
CHAT_PREFIX = CHAT_ROUTE.removesuffix("{endpoint}")


fake, url, model = QIANFAN.fixtures()


def qianfan_env(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("QIANFAN_AK", AK)
    monkeypatch.setenv("QIANFAN_SK", SK)
    monkeypatch.setenv("QIANFAN_BASE_URL", url)


# --------------------------------------------------------------------------- catalog


def test_user_deployed_endpoint_is_a_catalog_entry(
    tmp_path: Path, url: str, fake: FakeQianfan, monkeypatch: pytest.MonkeyPatch
) -> None:
    qianfan_env(monkeypatch, url)
    extra = tmp_path / "extra.toml"
    card = (
        'owned_by = "me"\nvendor = "qianfan"\nchannel = "在线模型"\nmax_input_token = 4096\n'
        'max_output_token = 512\nin_price = 0\nout_price = 0\nunit = "CNY"\n'
    )
    extra.write_text(
        f'[models."my-llama"]\n{card}vendor_model = "ngxxxol8_test1"\n'
        f'[models."my-ernie"]\n{card}vendor_model = "ngxxxol8_ernie"\n'
        "model_kwargs = { accepts_system = true, penalty_score = 1.5 }\n",
        encoding="utf-8",
    )
    settings = load_settings()
    catalog = load_catalog([*settings.catalog_files, extra])
    prompt = [SystemMessage("你是一个导游"), HumanMessage("介绍一下北京")]

    llama = get_chat_model("my-llama", catalog=catalog, settings=settings)
    assert llama.invoke(prompt).content == "Echo: 你是一个导游\n\n介绍一下北京"
    sent = fake.last_request
    assert sent["path"] == CHAT_PREFIX + "ngxxxol8_test1"
    assert "system" not in sent["body"]  # custom endpoints take no system prompt: folded

    ernie = get_chat_model("my-ernie", catalog=catalog, settings=settings)
    assert ernie.invoke(prompt).content == "Echo: 介绍一下北京"
    body = fake.last_request["body"]
    assert body["system"] == "你是一个导游"
    assert body["penalty_score"] == 1.5
    assert "accepts_system" not in body


def test_which_endpoints_take_a_system_prompt() -> None:
    for endpoint in ("completions_pro", "completions", "ernie_bot_8k", "eb-instant"):
        assert takes_system_prompt(endpoint), endpoint
    for endpoint in ("bloomz_7b1", "llama_2_70b", "mixtral_8x7b_instruct", "my_ep_123"):
        assert not takes_system_prompt(endpoint), endpoint


# --------------------------------------------------------------------------- the request


def test_payload_maps_standard_parameters(model: ChatQianfan, fake: FakeQianfan) -> None:
    tuned_model = tuned(model, model_kwargs={"penalty_score": 1.2, "user_id": "end-user-1"})
    tuned_model.invoke([SystemMessage("be brief"), HumanMessage("hi")], stop=["。"])
    sent = fake.last_request
    assert sent["body"] == {
        "messages": [{"role": "user", "content": "hi"}],
        "system": "be brief",
        "temperature": 0.3,
        "top_p": 0.9,
        "max_output_tokens": 50,
        "stop": ["。"],
        "penalty_score": 1.2,
        "user_id": "end-user-1",
        "stream": False,
    }
    assert sent["access_token"].startswith("24.")
    assert "authorization" not in sent["headers"]


def test_per_call_model_overrides_the_endpoint(model: ChatQianfan, fake: FakeQianfan) -> None:
    answer = model.invoke("hi", model="llama_2_13b")
    assert fake.last_request["endpoint"] == "llama_2_13b"
    assert answer.response_metadata["model_name"] == "llama_2_13b"
    chunks = list(model.stream("hi", model="eb-instant"))
    assert fake.last_request["endpoint"] == "eb-instant"
    assert summed(chunks).response_metadata["model_name"] == "eb-instant"
    assert model.invoke("hi").response_metadata["model_name"] == "completions_pro"


@pytest.mark.parametrize(("given", "sent"), [(0.0, 0.01), (0.7, 0.7), (1.5, 1.0)])
def test_temperature_is_kept_in_qianfans_range(
    model: ChatQianfan, fake: FakeQianfan, given: float, sent: float
) -> None:
    assert model.invoke("hi", temperature=given).content == "Echo: hi"
    assert fake.last_request["body"]["temperature"] == sent


def test_consecutive_messages_of_one_role_are_merged(model: ChatQianfan, fake: FakeQianfan) -> None:
    model.invoke(
        [
            SystemMessage("s1"),
            SystemMessage("s2"),
            HumanMessage("a"),
            HumanMessage("b"),
            AIMessage("c"),
            AIMessage("d"),
            HumanMessage("e"),
        ]
    )
    body = fake.last_request["body"]
    assert body["system"] == "s1\n\ns2"
    assert body["messages"] == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c\n\nd"},
        {"role": "user", "content": "e"},
    ]


@pytest.mark.parametrize(
    ("messages", "complaint"),
    [
        ([AIMessage("hello"), HumanMessage("hi")], "start with a user message"),
        ([HumanMessage("hi"), AIMessage("partial")], "end with a user message"),
        ([SystemMessage("only a system prompt")], "start with a user message"),
        ([HumanMessage("hi"), ToolMessage("42", tool_call_id="t1")], "tool"),
    ],
)
def test_sequences_qianfan_cannot_take_are_refused_before_sending(
    model: ChatQianfan, fake: FakeQianfan, messages: list[Any], complaint: str
) -> None:
    with pytest.raises(InvalidRequestError, match=complaint):
        model.invoke(messages)
    assert fake.requests == []


def test_fake_enforces_the_message_rules_like_the_service(url: str, fake: FakeQianfan) -> None:
    token = httpx.post(
        f"{url}/oauth/2.0/token",
        params={"grant_type": "client_credentials", "client_id": AK, "client_secret": SK},
    ).json()["access_token"]

    def chat(body: dict[str, Any]) -> dict[str, Any]:
        answer = httpx.post(f"{url}{CHAT_PREFIX}any_ep", params={"access_token": token}, json=body)
        assert answer.status_code == 200
        result: dict[str, Any] = answer.json()
        return result

    user, bot = {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}
    assert chat({"messages": [user, bot]})["error_code"] == 336006
    assert "odd" in chat({"messages": [user, bot]})["error_msg"]
    assert chat({"messages": [bot, user, bot]})["error_code"] == 336006
    assert chat({"messages": [user, user, user]})["error_code"] == 336006
    assert chat({"messages": [{"role": "user", "content": ""}]})["error_code"] == 336003
    assert chat({"messages": [user], "temperature": 0})["error_code"] == 336003
    ok = chat({"messages": [user, bot, user], "extra_parameters": {"x": 1}, "stop": None})
    assert ok["result"] == "Echo: u"


# --------------------------------------------------------------------------- the answer


def test_stream_usage_is_the_last_chunks_which_is_authoritative(model: ChatQianfan) -> None:
    chunks = list(model.stream("count these words please"))
    assert [c.content for c in chunks[:-1]] == [
        "Echo",
        ":",
        " count",
        " these",
        " words",
        " please",
    ]
    with_usage = [c for c in chunks if c.usage_metadata]
    assert with_usage == [chunks[-1]]


def test_baidu_gateway_request_id_is_preferred(url: str, fake: FakeQianfan) -> None:
    with urllib3.PoolManager(headers={"Request_id": "fc-req-1"}) as client:
        chat = ChatQianfan(
            model="completions", api_key=AK, secret_key=SK, base_url=url, http_client=client
        )
        answer = chat.invoke("hi")
        streamed = summed(list(chat.stream("hi")))
    assert answer.response_metadata["request_id"] == "fc-req-1"
    assert streamed.response_metadata["request_id"] == "fc-req-1"
    assert answer.id is not None and answer.id.startswith("as-")


# --------------------------------------------------------------------------- access tokens


def test_token_is_fetched_once_and_shared(url: str, model: ChatQianfan, fake: FakeQianfan) -> None:
    model.invoke("one")
    list(model.stream("two"))
    other = ChatQianfan(model="eb-instant", api_key=AK, secret_key=SK, base_url=url)
    other.invoke("three")
    assert fake.token_requests == 1
    assert len({r["access_token"] for r in fake.requests}) == 1


async def test_concurrent_async_calls_fetch_one_token(
    model: ChatQianfan, fake: FakeQianfan
) -> None:
    answers = await asyncio.gather(*(model.ainvoke(f"n{i}") for i in range(20)))
    assert [a.content for a in answers] == [f"Echo: n{i}" for i in range(20)]
    assert fake.token_requests == 1


def test_concurrent_threads_fetch_one_token(model: ChatQianfan, fake: FakeQianfan) -> None:
    answers = model.batch([f"t{i}" for i in range(12)], config={"max_concurrency": 12})
    assert [a.content for a in answers] == [f"Echo: t{i}" for i in range(12)]
    assert fake.token_requests == 1


def test_expired_token_is_refreshed_and_the_call_repeated(
    model: ChatQianfan, fake: FakeQianfan
) -> None:
    model.invoke("first")
    fake.expire_tokens()
    assert model.invoke("second").content == "Echo: second"
    assert fake.token_requests == 2
    first, refused, repeated = fake.requests
    assert refused["access_token"] == first["access_token"] != repeated["access_token"]


async def test_expired_token_is_refreshed_for_async_streams(
    model: ChatQianfan, fake: FakeQianfan
) -> None:
    await model.ainvoke("first")
    fake.clear_tokens()  # unknown token: error 110
    text = "".join([str(c.content) async for c in model.astream("again")])
    assert text == "Echo: again"
    assert fake.token_requests == 2


def test_token_refused_twice_is_an_authentication_error(
    model: ChatQianfan, fake: FakeQianfan
) -> None:
    fake.inject(Fault.TOKEN_EXPIRED, times=2)
    with pytest.raises(CredentialsExpiredError) as caught:
        model.invoke("hi")
    assert isinstance(caught.value, AuthenticationError)
    assert caught.value.code == 111
    assert len(fake.requests) == 2  # refreshed and repeated once, then given up
    assert fake.token_requests == 2


def test_each_retry_may_refresh_a_token_that_expired_again(
    model: ChatQianfan, fake: FakeQianfan
) -> None:
    """A token refused, a 500, a token refused again: each attempt refreshes at most once, so
    a token that expires during the retry waits is renewed and the call still succeeds, and
    a call never refreshes more often than it attempts."""
    fake.inject(Fault.TOKEN_EXPIRED)
    fake.inject(Fault.SERVER_ERROR)
    fake.inject(Fault.TOKEN_EXPIRED)
    assert model.invoke("hi").content == "Echo: hi"
    assert len(fake.requests) == 4  # refused, repeated (500), retried (refused), repeated
    assert fake.token_requests == 3  # the first token and one per refusal


def test_token_expiring_soon_is_renewed_before_use(url: str, fake: FakeQianfan) -> None:
    fake.token_lifetime = 2  # renewed after 1.8 s, before the service would refuse it
    try:
        chat = ChatQianfan(model="completions", api_key=AK, secret_key=SK, base_url=url)
        chat.invoke("a")
        time.sleep(2.0)
        chat.invoke("b")
    finally:
        fake.token_lifetime = 2592000
    assert fake.token_requests == 2
    assert len(fake.requests) == 2  # no refused call in between


@pytest.mark.parametrize(
    ("ak", "sk", "reason"),
    [("wrong-ak", SK, "unknown client id"), (AK, "wrong-sk", "Client authentication failed")],
)
async def test_wrong_keys_are_authentication_errors_without_leaks(
    url: str, fake: FakeQianfan, ak: str, sk: str, reason: str
) -> None:
    chat = ChatQianfan(model="completions", api_key=ak, secret_key=sk, base_url=url)
    with pytest.raises(AuthenticationError, match=reason) as caught:
        chat.invoke("hi")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_client"
    assert_no_secret(sk, chat, caught.value)
    with pytest.raises(AuthenticationError, match=reason) as async_caught:
        await chat.ainvoke("hi")
    assert_no_secret(sk, async_caught.value)
    assert fake.requests == []  # no chat call without a token
    assert fake.token_requests == 2  # the refusal is not retried


def test_missing_credentials_name_the_variables(url: str, fake: FakeQianfan) -> None:
    with pytest.raises(AuthenticationError, match="QIANFAN_SK"):
        ChatQianfan(model="completions", api_key=AK, base_url=url).invoke("hi")
    with pytest.raises(AuthenticationError, match="QIANFAN_AK"):
        ChatQianfan(model="completions", base_url=url).invoke("hi")


def test_an_unreachable_token_endpoint_is_a_connection_error_that_says_so() -> None:
    """Nothing listens on the port: the token fetch fails first, and says it was that."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    chat = ChatQianfan(
        model="completions",
        api_key=AK,
        secret_key=SK,
        base_url=f"http://127.0.0.1:{port}",
        max_retries=0,
    )
    with pytest.raises(VendorConnectionError, match="access token request failed") as caught:
        chat.invoke("hi")
    assert_no_secret(SK, chat, caught.value)


def test_secrets_and_token_stay_out_of_repr_errors_and_logs(
    url: str, fake: FakeQianfan, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "qf-very-secret-sk-123"
    fake.credentials["qf-ak-2"] = secret
    try:
        chat = ChatQianfan(
            model="completions", api_key="qf-ak-2", secret_key=secret, base_url=url, max_retries=0
        )
        with caplog.at_level(logging.DEBUG):
            chat.invoke("hi")
            fake.inject(Fault.SERVER_ERROR)
            with pytest.raises(UpstreamError) as caught:
                chat.invoke("hi")
    finally:
        del fake.credentials["qf-ak-2"]
    token = fake.last_request["access_token"]
    assert "access_token=***" in caplog.text  # urllib3 logged the call, redacted
    for value in (secret, token):
        assert value not in caplog.text
        assert_no_secret(value, chat, caught.value)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("code", "message", "kind", "retryable"),
    [
        (110, "Access token invalid or no longer valid", CredentialsExpiredError, False),
        (111, "Access token expired", CredentialsExpiredError, False),
        (14, "IAM Certification failed", AuthenticationError, False),
        (336004, "permission error", AuthenticationError, False),
        (4, "Open api request limit reached", RateLimitError, True),
        (18, "Open api qps request limit reached", RateLimitError, True),
        (336501, "Rate limit reached for RPM", RateLimitError, True),
        (336502, "Rate limit reached for TPM", RateLimitError, True),
        (17, "Open api daily request limit reached", QuotaExceededError, False),
        (19, "Open api total request limit reached", QuotaExceededError, False),
        (336007, "the max length of current question is 2000", ContextTooLongError, False),
        (336103, "Prompt tokens too long", ContextTooLongError, False),
        (336000, "Internal error", UpstreamError, True),
        (336100, "try again later", UpstreamError, True),
        (2, "Service temporarily unavailable", UpstreamError, True),
        (336003, "the input text is sensitive", ContentFilteredError, False),
        (336006, "the length of messages must be an odd number", InvalidRequestError, False),
        (336104, "Invalid argument system", InvalidRequestError, False),
    ],
)
def test_qianfan_error_codes(
    model: ChatQianfan, code: int, message: str, kind: type[VendorError], retryable: bool
) -> None:
    meta = ResponseMeta(200, httpx.Headers(), None)
    with pytest.raises(VendorError) as caught:
        model._check_body({"error_code": code, "error_msg": message, "id": "as-1"}, meta)
    assert type(caught.value) is kind
    assert caught.value.code == code
    assert caught.value.request_id == "as-1"
    assert bool(caught.value.is_retryable) is retryable


class _NoEndFake(FakeQianfan):
    """A server whose stream stops cleanly without the ``is_end`` event."""

    async def stream(
        self, answer_id: str, reply: Reply, fault: FaultSpec | None
    ) -> AsyncIterator[str]:
        async for event in super().stream(answer_id, reply, fault):
            if '"is_end": true' in event:
                return
            yield event


def test_stream_that_stops_without_its_last_event_is_an_error(fake: FakeQianfan) -> None:
    broken = _NoEndFake()
    with serve_in_thread(broken.app) as broken_url:
        chat = ChatQianfan(model="completions", api_key=AK, secret_key=SK, base_url=broken_url)
        with pytest.raises(UpstreamError, match="is_end"):
            list(chat.stream("hi there"))
