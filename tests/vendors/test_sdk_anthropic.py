"""The official anthropic SDK, unchanged, against the fake Anthropic server: proof the fake
speaks the protocol the real client expects (named stream events, split usage, error bodies
and the ``request-id`` header)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.anthropic import FakeAnthropic
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendor_sdks import run_vendor_sdk

pytestmark = pytest.mark.timeout(900)

CLIENT = """
import anthropic
from anthropic import Anthropic
client = Anthropic(base_url={url!r}, api_key={key!r}, max_retries=0)
"""


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(anthropic_server: tuple[FakeAnthropic, str]) -> Iterator[FakeAnthropic]:
    served, _ = anthropic_server
    served.clear_faults()
    served.requests.clear()
    yield served
    served.clear_faults()


@pytest.fixture
def url(anthropic_server: tuple[FakeAnthropic, str]) -> str:
    return anthropic_server[1]


def test_sdk_create_and_stream(url: str, fake: FakeAnthropic) -> None:
    result = run_vendor_sdk(
        "anthropic",
        CLIENT.format(url=url, key="sk-ant-test")
        + """
kwargs = dict(model="claude-3-opus-20240229", max_tokens=50, system="be terse",
              messages=[{"role": "user", "content": "hello there"}])
answer = client.messages.create(**kwargs)
with client.messages.stream(**kwargs) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
cut = client.messages.create(**{**kwargs, "max_tokens": 2})
stopped = client.messages.create(**kwargs, stop_sequences=["there"])
result = {
    "type": type(answer).__name__,
    "text": answer.content[0].text,
    "id": answer.id,
    "model": answer.model,
    "stop_reason": answer.stop_reason,
    "usage": [answer.usage.input_tokens, answer.usage.output_tokens],
    "streamed": streamed,
    "final_text": final.content[0].text,
    "final_stop": final.stop_reason,
    "final_usage": [final.usage.input_tokens, final.usage.output_tokens],
    "cut": [cut.stop_reason, cut.usage.output_tokens],
    "stopped": [stopped.stop_reason, stopped.stop_sequence],
}
""",
    )
    assert result["type"] == "Message"
    assert result["text"] == "Echo: hello there"
    assert result["id"].startswith("msg_")
    assert result["model"] == "claude-3-opus-20240229"
    assert result["stop_reason"] == "end_turn"
    assert result["usage"] == [4, 4]  # system prompt + question; "Echo: hello there"
    assert result["streamed"] == result["text"] == result["final_text"]
    assert result["final_stop"] == "end_turn"
    assert result["final_usage"] == result["usage"]
    assert result["cut"] == ["max_tokens", 2]
    assert result["stopped"] == ["stop_sequence", "there"]
    # SDK 2.x sends its key as a bearer token and a newer version date; both accepted
    headers = fake.last_request["headers"]
    assert headers.get("x-api-key") or headers["authorization"] == "Bearer sk-ant-test"
    assert headers["anthropic-version"]


def test_sdk_maps_fake_errors(url: str, fake: FakeAnthropic) -> None:
    fake.inject(Fault.UNAUTHORIZED)
    fake.inject(Fault.RATE_LIMITED, retry_after=1)
    fake.inject(Fault.SERVER_ERROR)
    fake.inject(Fault.CONTEXT_TOO_LONG)
    fake.inject(Fault.CONTENT_FILTERED)
    result = run_vendor_sdk(
        "anthropic",
        CLIENT.format(url=url, key="sk-ant-test")
        + """
seen = []
for _ in range(5):
    try:
        client.messages.create(model="claude-3-opus-20240229", max_tokens=10,
            messages=[{"role": "user", "content": "hi"}])
        seen.append(None)
    except anthropic.APIStatusError as exc:
        seen.append({"class": type(exc).__name__, "status": exc.status_code,
                     "type": exc.type, "message": exc.api_message,
                     "request_id": exc.request_id,
                     "retry_after": exc.response.headers.get("retry-after")})
result = seen
""",
    )
    classes = [(r["class"], r["status"], r["type"]) for r in result]
    assert classes == [
        ("AuthenticationError", 401, "authentication_error"),
        ("RateLimitError", 429, "rate_limit_error"),
        ("InternalServerError", 500, "api_error"),
        ("BadRequestError", 400, "invalid_request_error"),
        ("BadRequestError", 400, "invalid_request_error"),
    ]
    assert all(r["request_id"].startswith("req_") for r in result)
    assert result[1]["retry_after"] == "1"
    assert result[3]["message"].startswith("prompt is too long")


def test_sdk_overloaded_and_mid_stream_error(url: str, fake: FakeAnthropic) -> None:
    fake.overload()
    fake.inject(Fault.MID_STREAM_ERROR)
    result = run_vendor_sdk(
        "anthropic",
        CLIENT.format(url=url, key="sk-ant-test")
        + """
kwargs = dict(model="claude-3-opus-20240229", max_tokens=50,
              messages=[{"role": "user", "content": "one two three"}])
try:
    client.messages.create(**kwargs)
    overloaded = None
except anthropic.InternalServerError as exc:
    overloaded = [type(exc).__name__, exc.status_code, exc.type]
seen = []
try:
    for ev in client.messages.create(**kwargs, stream=True):
        seen.append(ev.type)
    mid = None
except anthropic.APIStatusError as exc:
    mid = [type(exc).__name__, exc.type, exc.api_message]
try:
    client.with_options(api_key="sk-ant-wrong").messages.create(**kwargs)
    bad_key = None
except anthropic.AuthenticationError as exc:
    bad_key = exc.api_message
result = {"overloaded": overloaded, "mid": mid, "seen": seen, "bad_key": bad_key}
""",
    )
    assert result["overloaded"] == ["OverloadedError", 529, "overloaded_error"]
    assert result["mid"] == ["APIStatusError", "overloaded_error", "Overloaded"]
    assert result["seen"][:2] == ["message_start", "content_block_start"]
    assert result["seen"].count("content_block_delta") == 2
    assert "message_stop" not in result["seen"]
    assert result["bad_key"] == "invalid x-api-key"
