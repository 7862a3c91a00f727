"""The InternLM puyu chat model against the fake puyu server, over real loopback HTTP.

There is no official puyu SDK on PyPI (OpenXLab's ``openxlab`` package only mints the token),
so unlike the other vendors there is no ``test_sdk_internlm.py``: the fake follows the seed's
request and the third-party clients cited in ``docs/vendors.md`` section 8a instead. What every
vendor shares is in ``test_contract.py``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage

from fengchao_chains.llms._http import ResponseMeta
from fengchao_chains.llms.errors import (
    AuthenticationError,
    InvalidRequestError,
    UpstreamError,
    VendorConnectionError,
)
from fengchao_chains.llms.internlm import PUYU_BASE_URL, ChatInternLM
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.internlm import FakeInternLM
from tests.vendors.checks import summed
from tests.vendors.harness import INTERNLM

TOKEN = "puyu-test-token"


fake, base_url, model = INTERNLM.fixtures(url="base_url")


def _text(chunks: list[AIMessageChunk]) -> str:
    return "".join(str(c.content) for c in chunks)


# --------------------------------------------------------------------------- endpoint


def test_default_endpoint_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ChatInternLM()._endpoint() == PUYU_BASE_URL + "/chat/completion"
    assert ChatInternLM().model == "ChatPJLM-latest"
    monkeypatch.setenv("INTERNLM_API_KEY", "env-token")
    monkeypatch.setenv("INTERNLM_BASE_URL", "http://example.invalid/puyu/api/v1/")
    chat = ChatInternLM()
    assert chat.api_key is not None and chat.api_key.get_secret_value() == "env-token"
    assert chat._endpoint() == "http://example.invalid/puyu/api/v1/chat/completion"


def test_a_full_endpoint_url_is_used_as_is(fake: FakeInternLM, base_url: str) -> None:
    chat = ChatInternLM(api_key=TOKEN, base_url=f"{base_url}/chat/completion")
    assert chat.invoke("hi").content == "Echo: hi"
    assert fake.last_request["path"] == "/puyu/api/v1/chat/completion"


# --------------------------------------------------------------------------- the wire


def test_request_has_the_seed_shape(model: ChatInternLM, fake: FakeInternLM) -> None:
    seeded = model.model_copy(update={"temperature": 0.8, "top_p": 0.1})
    seeded.invoke(
        [
            HumanMessage("茴香豆是什么 ？"),
            AIMessage("茴香豆是一个基于LLM的领域知识助手。"),
            HumanMessage("alles-apin 的作者是谁？"),
        ]
    )
    assert fake.last_request["body"] == {
        "model": "ChatPJLM-latest",
        "messages": [
            {"role": "user", "text": "茴香豆是什么 ？"},
            {"role": "assistant", "text": "茴香豆是一个基于LLM的领域知识助手。"},
            {"role": "user", "text": "alles-apin 的作者是谁？"},
        ],
        "n": 1,
        "temperature": 0.8,
        "top_p": 0.1,
        "disable_report": False,
    }


def test_payload_maps_standard_and_vendor_parameters(
    model: ChatInternLM, fake: FakeInternLM
) -> None:
    tuned = model.model_copy(
        update={
            "max_tokens": 50,
            "disable_report": True,
            "model_kwargs": {"plugins": {"Search": False, "Solve": False, "Calculate": False}},
        }
    )
    tuned.invoke([SystemMessage("be brief"), HumanMessage("hi")], stop=["\n\n"], top_p=0.5)
    body = fake.last_request["body"]
    assert body["max_tokens"] == 50
    assert body["stop"] == ["\n\n"]
    assert body["top_p"] == 0.5
    assert body["disable_report"] is True
    assert body["plugins"] == {"Search": False, "Solve": False, "Calculate": False}
    assert body["messages"] == [
        {"role": "system", "text": "be brief"},
        {"role": "user", "text": "hi"},
    ]
    assert "stream" not in body and "temperature" not in body


def test_per_call_model_overrides_the_model(model: ChatInternLM, fake: FakeInternLM) -> None:
    answer = model.invoke("hi", model="ChatPJLM-0.2")
    assert fake.last_request["body"]["model"] == "ChatPJLM-0.2"
    assert answer.response_metadata["model_name"] == "ChatPJLM-0.2"


def test_only_the_first_of_n_choices_is_the_answer(model: ChatInternLM, fake: FakeInternLM) -> None:
    answer = model.model_copy(update={"n": 2}).invoke("hi")
    assert fake.last_request["body"]["n"] == 2
    assert answer.content == "Echo: hi"
    with pytest.raises(ValueError):
        ChatInternLM(n=0)


def test_stream_is_the_whole_answer_then_the_closing_chunk(
    model: ChatInternLM, fake: FakeInternLM
) -> None:
    chunks = list(model.stream("count these words please"))
    stream_body = fake.last_request["body"]
    assert [c.content for c in chunks] == ["Echo: count these words please", ""]
    assert [c.usage_metadata is not None for c in chunks] == [False, True]
    assert chunks[-1].chunk_position == "last"
    non_stream = model.invoke("count these words please")
    assert fake.last_request["body"] == stream_body  # the API has no stream flag
    assert fake.last_request["headers"]["accept"] == "application/json"
    total = summed(chunks)
    assert total.usage_metadata == non_stream.usage_metadata
    assert total.response_metadata["finish_reason"] == "stop"


def test_request_id_and_message_id(model: ChatInternLM) -> None:
    answer = model.invoke("hi")
    assert str(answer.response_metadata["request_id"]).startswith("puyu-req-")
    assert answer.id and answer.id.startswith("puyu-")


def test_lenient_answer_shapes() -> None:
    chat = ChatInternLM(api_key="t")
    meta = ResponseMeta(200, httpx.Headers(), None)
    minimal = {"msg": "success", "data": {"choices": [{"text": "你好！"}]}}
    chat._check_body(minimal, meta)
    parsed = chat._parse_response(minimal, meta).generations[0].message
    assert parsed.content == "你好！"
    assert parsed.response_metadata["finish_reason"] == "stop"
    successor = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 2}}
    chat._check_body(successor, meta)
    parsed = chat._parse_response(successor, meta).generations[0].message
    assert parsed.content == "hi"
    assert isinstance(parsed, AIMessage) and parsed.usage_metadata == {
        "input_tokens": 2,
        "output_tokens": 0,
        "total_tokens": 2,
    }
    with pytest.raises(UpstreamError):
        chat._check_body({"msg": "success", "data": {"choices": []}}, meta)
    with pytest.raises(UpstreamError) as caught:
        chat._check_body({"msgCode": "-1", "msg": "busy", "data": {"choices": [{}]}}, meta)
    assert caught.value.code == "-1"


# --------------------------------------------------------------------------- usage


async def test_missing_usage_is_estimated_and_flagged(
    model: ChatInternLM, fake: FakeInternLM
) -> None:
    fake.send_usage = True
    reported = model.invoke("你好 world")
    fake.send_usage = False
    estimated = model.invoke("你好 world")
    assert estimated.usage_metadata == reported.usage_metadata  # same counting rule
    assert estimated.response_metadata["usage_estimated"] is True
    assert "usage_estimated" not in reported.response_metadata
    for chunks in (
        list(model.stream("你好 world")),
        [c async for c in model.astream("你好 world")],
    ):
        assert [c.usage_metadata for c in chunks if c.usage_metadata] == [reported.usage_metadata]
        assert summed(chunks).response_metadata["usage_estimated"] is True
    assert (await model.ainvoke("你好 world")).response_metadata["usage_estimated"] is True
    unset = model.model_copy(update={"estimate_usage": False}).invoke("hi")
    assert unset.usage_metadata is None


# --------------------------------------------------------------------------- auth


def test_missing_token_fails_before_any_request(fake: FakeInternLM, base_url: str) -> None:
    with pytest.raises(AuthenticationError, match="INTERNLM_API_KEY"):
        ChatInternLM(base_url=base_url).invoke("hi")
    assert fake.requests == []


def test_bearer_form_is_sent_unchanged(fake: FakeInternLM, base_url: str) -> None:
    chat = ChatInternLM(api_key=f"Bearer {TOKEN}", base_url=base_url)
    assert chat.invoke("hi").content == "Echo: hi"
    assert fake.last_request["headers"]["authorization"] == f"Bearer {TOKEN}"


# --------------------------------------------------------------------------- errors


def test_malformed_request_is_invalid(fake: FakeInternLM, base_url: str) -> None:
    from langchain_core.messages import ChatMessage

    chat = ChatInternLM(api_key=TOKEN, base_url=base_url)
    with pytest.raises(InvalidRequestError) as caught:
        chat.invoke([ChatMessage(role="function", content="x")])
    assert caught.value.status_code == 400
    assert "role" in caught.value.message


def test_business_error_in_a_200_is_retried_then_raised(
    model: ChatInternLM, fake: FakeInternLM
) -> None:
    fake.inject(Fault.MID_STREAM_ERROR)
    assert model.invoke("hi").content == "Echo: hi"
    assert len(fake.requests) == 2
    fake.inject(Fault.MID_STREAM_ERROR, times=3)
    with pytest.raises(UpstreamError) as caught:
        model.invoke("hi")
    assert (caught.value.status_code, caught.value.code) == (200, "-1")
    assert "inference failed" in caught.value.message


# --------------------------------------------------------------------------- retries


def test_cut_connection_is_a_connection_error(model: ChatInternLM, fake: FakeInternLM) -> None:
    fake.inject(Fault.CUT_STREAM)
    with pytest.raises(VendorConnectionError):
        model.model_copy(update={"max_retries": 0}).invoke("hi")
    assert len(fake.requests) == 1


async def test_cut_stream_is_retried_because_nothing_was_delivered(
    model: ChatInternLM, fake: FakeInternLM
) -> None:
    """No streamed byte reaches the caller before the whole answer is read, so a dropped
    connection is retried without duplicating any text."""
    fake.inject(Fault.CUT_STREAM)
    chunks = [c async for c in model.astream("one two three four")]
    assert _text(chunks) == "Echo: one two three four"
    assert len(fake.requests) == 2
    fake.inject(Fault.CUT_STREAM)
    received: list[Any] = []
    with pytest.raises(VendorConnectionError):
        for chunk in model.model_copy(update={"max_retries": 0}).stream("one two three four"):
            received.append(chunk)
    assert received == []
