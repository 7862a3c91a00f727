"""The contract every vendor's chat model keeps, run against each fake vendor.

Each test runs once per :class:`~tests.vendors.harness.VendorHarness` (ids like ``[qianfan]``);
what legitimately differs between vendors (error codes, finish reasons, whether a stream is
really streamed) comes from the harness. What only one vendor does stays in its own
``test_<vendor>.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import ContextOverflowError, ModelAuthenticationError
from langchain_core.messages import AIMessageChunk
from langchain_core.prompts import ChatPromptTemplate

from fengchao_chains import get_chat_model
from fengchao_chains.catalog import load_catalog
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContextTooLongError,
    CredentialsExpiredError,
    RateLimitError,
    UpstreamError,
    VendorConnectionError,
    VendorError,
    VendorTimeoutError,
)
from fengchao_chains.settings import load_settings
from fengchao_chains.testing.fakes._common import FakeVendor, Fault
from tests.vendors.checks import Tokens, assert_four_modes, assert_no_secret, summed
from tests.vendors.harness import HARNESSES, Expected, VendorHarness

STREAMING = [h for h in HARNESSES if h.streams]


def check(
    error: BaseException, harness: VendorHarness, expected: Expected, request_id: str | None
) -> None:
    """``error`` is exactly the expected class, code and status, names the vendor, has a
    request id starting with ``request_id`` ("" any, None unchecked), and LangChain's
    classes catch it."""
    assert type(error) is expected.error, repr(error)
    assert isinstance(error, VendorError)
    assert error.vendor == harness.vendor
    assert error.code == expected.code
    assert error.status_code == expected.status
    if request_id is not None:
        assert error.request_id and error.request_id.startswith(request_id), error.request_id
    if isinstance(error, AuthenticationError):
        assert isinstance(error, ModelAuthenticationError)
    if isinstance(error, ContextTooLongError):
        assert isinstance(error, ContextOverflowError)


def text(chunks: list[AIMessageChunk]) -> str:
    return "".join(str(c.content) for c in chunks)


# --------------------------------------------------------------------------- answers


CATALOG_CASES = [
    pytest.param(h, model_id, id=f"{h}-{model_id}") for h in HARNESSES for model_id in h.catalog
]


@pytest.mark.parametrize(("harness", "model_id"), CATALOG_CASES)
async def test_every_catalog_model_in_all_four_modes(
    harness: VendorHarness,
    model_id: str,
    *,
    fake: FakeVendor,
    url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in harness.env(harness.base_url(url)).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    catalog = None
    if harness.catalog_toml:
        extra = tmp_path / "extra.toml"
        extra.write_text(harness.catalog_toml, encoding="utf-8")
        catalog = load_catalog([*settings.catalog_files, extra])
    chat = get_chat_model(model_id, catalog=catalog, settings=settings, **harness.factory_overrides)
    assert isinstance(chat, harness.chat_class)
    vendor_model = harness.catalog[model_id]
    await assert_four_modes(chat, expected_model=vendor_model, question=harness.question)
    assert harness.count_requests(fake) == 6  # invoke, stream, ainvoke, astream, 2 x abatch
    assert {r["path"] for r in fake.requests} == {harness.chat_path.format(model=vendor_model)}
    if harness.sent_model is not None:
        assert {harness.sent_model(r) for r in fake.requests} == {vendor_model}
    if harness.auth_header is not None:
        header, value = harness.auth_header
        assert {r["headers"][header] for r in fake.requests} == {value}
    if harness.token_requests is not None:
        assert harness.token_requests(fake) == 1  # one token for every call, sync and async


def test_max_tokens_and_stop_reach_the_vendor(harness: VendorHarness, url: str) -> None:
    model = harness.model(url)
    cut = model.invoke("one two three four five six", max_tokens=3)
    assert cut.content == "Echo: one"
    assert cut.response_metadata["finish_reason"] == harness.length_reason
    if harness.usage is not None:
        assert cut.usage_metadata is not None and cut.usage_metadata["output_tokens"] == 3
    stopped = model.invoke("alpha beta gamma", stop=["beta"])
    assert stopped.content == harness.stopped_text
    assert stopped.response_metadata["finish_reason"] == harness.stop_reason


def test_a_call_reports_its_parameters_and_leaves_warning_filters_alone(
    harness: VendorHarness, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run's ``invocation_params`` are the model's own plus the call's, and a call does
    not swap the process's warning filters (which other threads share) to get them."""
    seen: list[dict[str, Any]] = []

    class Params(BaseCallbackHandler):
        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            seen.append(kwargs["invocation_params"])

    swaps = 0
    real_enter = warnings.catch_warnings.__enter__

    def counted_enter(self: warnings.catch_warnings) -> Any:
        nonlocal swaps
        swaps += 1
        return real_enter(self)

    model = harness.model(url)
    model.invoke("warm up")  # imports and first-use set-up may warn, once
    monkeypatch.setattr(warnings.catch_warnings, "__enter__", counted_enter)
    model.invoke("hi", config={"callbacks": [Params()]}, max_tokens=7)
    asyncio.run(model.ainvoke("hi", config={"callbacks": [Params()]}, max_tokens=7))
    assert swaps == 0
    expected = {**model.asdict(), "stop": None, "max_tokens": 7}
    assert seen == [expected, expected]
    assert expected["_type"] == f"fengchao-{harness.vendor}"


def test_stream_carries_usage_exactly_once(harness: VendorHarness, url: str) -> None:
    model = harness.model(url)
    chunks = list(model.stream("count these words please"))
    assert len([c for c in chunks if c.usage_metadata]) == 1
    total = summed(chunks)
    answer = model.invoke("count these words please")
    assert total.content == answer.content == "Echo: count these words please"
    assert total.usage_metadata == answer.usage_metadata
    if harness.usage is not None:
        assert answer.usage_metadata == harness.usage
    assert total.response_metadata["finish_reason"] == harness.finish_reason
    for message in (total, answer) if harness.request_ids else ():
        request_id = message.response_metadata["request_id"]
        assert request_id and request_id.startswith(harness.answer_prefix or "")
        if harness.answer_id_is_request_id:
            assert message.id == request_id


def test_composes_in_a_chain_with_callbacks(harness: VendorHarness, url: str) -> None:
    handler = Tokens()
    prompt = ChatPromptTemplate.from_messages([("system", "terse"), ("human", "{q}")])
    chain = prompt | harness.model(url)
    streamed = "".join(
        str(c.content) for c in chain.stream({"q": "ping"}, config={"callbacks": [handler]})
    )
    assert streamed == "Echo: ping"
    assert "".join(handler.tokens) == "Echo: ping"
    assert [m.content for m in chain.batch([{"q": "a"}, {"q": "b"}])] == ["Echo: a", "Echo: b"]


async def test_concurrent_async_calls(harness: VendorHarness, url: str) -> None:
    model = harness.model(url)
    answers = await asyncio.gather(*(model.ainvoke(f"n{i}", model=f"m{i}") for i in range(20)))
    assert [a.content for a in answers] == [f"Echo: n{i}" for i in range(20)]
    asked = [harness.served_model or f"m{i}" for i in range(20)]
    assert [a.response_metadata["model_name"] for a in answers] == asked


# --------------------------------------------------------------------------- errors


FAULT_CASES = [pytest.param(h, f, id=f"{h}-{f}") for h in HARNESSES for f in h.faults]


@pytest.mark.parametrize(("harness", "fault"), FAULT_CASES)
@pytest.mark.parametrize("mode", ["invoke", "stream", "astream"])
async def test_faults_map_to_the_tree_without_retry(
    harness: VendorHarness, fault: Fault, mode: str, fake: FakeVendor, url: str
) -> None:
    model = harness.model(url)
    fake.inject(fault)
    with pytest.raises(VendorError) as caught:
        if mode == "invoke":
            model.invoke("hi")
        elif mode == "stream":
            list(model.stream("hi"))
        else:
            async for _ in model.astream("hi"):
                pass
    check(caught.value, harness, harness.faults[fault], harness.request_id_prefix)
    assert harness.count_requests(fake) == 1


def test_prompt_over_the_context_window(harness: VendorHarness, fake: FakeVendor, url: str) -> None:
    model = harness.model(url)
    fake.context_window = 20
    expected = harness.faults[Fault.CONTEXT_TOO_LONG]
    with pytest.raises(ContextTooLongError) as caught:
        model.invoke("word " * 50)
    check(caught.value, harness, expected, harness.request_id_prefix)
    assert harness.context_message in str(caught.value)
    with pytest.raises(ContextTooLongError) as streamed:
        list(model.stream("word " * 50))
    check(streamed.value, harness, expected, harness.request_id_prefix)
    assert harness.count_requests(fake) == 2


def test_bad_credentials_are_refused_and_never_leak(
    harness: VendorHarness, fake: FakeVendor, url: str
) -> None:
    chat = harness.model(url, **harness.bad_credentials)
    with pytest.raises(AuthenticationError) as caught:
        chat.invoke("hi")
    with pytest.raises(AuthenticationError) as streamed:
        list(chat.stream("hi"))
    assert not isinstance(caught.value, CredentialsExpiredError)
    # refused before any chat request when fetching the token: then no request id
    request_id = None if harness.token_requests is not None else harness.request_id_prefix
    for error in (caught.value, streamed.value):
        check(error, harness, harness.bad_key, request_id)
    if harness.token_requests is not None:
        assert harness.count_requests(fake) == 0  # no chat call without a token
        assert harness.token_requests(fake) == 2  # one per call: the refusal is not retried
    else:
        assert harness.count_requests(fake) == 2  # one per call: never retried
    sent = [r["headers"] for r in fake.requests]
    if harness.auth_header is not None:  # the refused key went where a good one goes
        header, value = harness.auth_header
        refused = value.replace(harness.credentials["api_key"], harness.bad_credentials["api_key"])
        assert [headers[header] for headers in sent] == [refused, refused]
    for secret in harness.secrets:
        assert_no_secret(secret, chat, caught.value, streamed.value)
    for secret in harness.never_sent:
        assert all(secret not in json.dumps(headers) for headers in sent)
    for headers in sent:  # nor the token or signature made from it
        credential = str(headers.get("authorization", "")).removeprefix("Bearer ")
        if credential:
            assert_no_secret(credential, chat, caught.value, streamed.value)


# --------------------------------------------------------------------------- retries


def test_rate_limit_is_retried_honouring_retry_after(
    harness: VendorHarness, fake: FakeVendor, url: str
) -> None:
    fake.inject(Fault.RATE_LIMITED, times=2, retry_after=0.3)
    started = time.monotonic()
    assert harness.model(url).invoke("hi").content == "Echo: hi"
    assert time.monotonic() - started >= 0.6
    assert harness.count_requests(fake) == 3


def test_rate_limit_gives_up_after_max_retries(
    harness: VendorHarness, fake: FakeVendor, url: str
) -> None:
    fake.inject(Fault.RATE_LIMITED, times=5, retry_after=0)
    with pytest.raises(RateLimitError) as caught:
        harness.model(url).invoke("hi")
    check(caught.value, harness, harness.rate_limited, harness.request_id_prefix)
    assert caught.value.retry_after == 0
    assert harness.count_requests(fake) == 3  # first try + max_retries


async def test_server_errors_are_retried_async(
    harness: VendorHarness, fake: FakeVendor, url: str
) -> None:
    model = harness.model(url)
    fake.inject(Fault.SERVER_ERROR)
    assert (await model.ainvoke("hi")).content == "Echo: hi"
    fake.inject(Fault.SERVER_ERROR, times=3)
    with pytest.raises(UpstreamError) as caught:
        await model.ainvoke("hi")
    check(caught.value, harness, harness.server_error, harness.request_id_prefix)
    assert harness.count_requests(fake) == 5


def test_timeout_is_a_timeout_error(harness: VendorHarness, fake: FakeVendor, url: str) -> None:
    model = harness.model(url)
    model.invoke("warm up")  # fetches or mints any token outside the timed call
    fake.inject(Fault.SLOW, times=3, delay=1.0)
    quick = harness.model(url, timeout=0.2, max_retries=0)
    with pytest.raises(VendorTimeoutError):
        quick.invoke("hi")
    assert harness.count_requests(fake) == 2


# --------------------------------------------------------------------------- streams


@pytest.mark.parametrize("harness", STREAMING, ids=str)
def test_error_mid_stream_is_raised_not_retried(
    harness: VendorHarness, fake: FakeVendor, url: str
) -> None:
    fake.inject(Fault.MID_STREAM_ERROR)
    received: list[AIMessageChunk] = []
    with pytest.raises(UpstreamError) as caught:
        for chunk in harness.model(url).stream("one two three four"):
            received.append(chunk)
    assert text(received) == "Echo:"
    assert not any(c.usage_metadata for c in received)
    check(caught.value, harness, harness.mid_stream, harness.answer_prefix)  # no connection error
    if harness.answer_id_is_request_id:
        assert caught.value.request_id == received[0].id  # the id of the chunks already seen
    assert harness.count_requests(fake) == 1


@pytest.mark.parametrize("harness", STREAMING, ids=str)
async def test_error_before_any_text_of_an_async_stream(
    harness: VendorHarness, fake: FakeVendor, url: str
) -> None:
    fake.inject(Fault.MID_STREAM_ERROR, after_chunks=0)
    with pytest.raises(UpstreamError) as caught:
        async for _ in harness.model(url).astream("one two three four"):
            pass
    check(caught.value, harness, harness.mid_stream, None)
    assert harness.count_requests(fake) == 1  # a stream that has begun is never replayed


@pytest.mark.parametrize("harness", STREAMING, ids=str)
async def test_cut_stream_is_a_connection_error_not_retried(
    harness: VendorHarness, fake: FakeVendor, url: str
) -> None:
    fake.inject(Fault.CUT_STREAM)
    with pytest.raises(VendorConnectionError):
        async for _ in harness.model(url).astream("one two three four"):
            pass
    assert harness.count_requests(fake) == 1


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.RATE_LIMITED])
async def test_stream_is_retried_before_the_first_byte(
    harness: VendorHarness, fault: Fault, fake: FakeVendor, url: str
) -> None:
    fake.inject(fault, retry_after=0)
    assert text([c async for c in harness.model(url).astream("hi")]) == "Echo: hi"
    assert harness.count_requests(fake) == 2
