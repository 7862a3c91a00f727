"""The official openai SDK, unchanged, against the fake OpenAI server: proof the fake speaks
the protocol the real client expects (and so that our model is tested against the truth)."""

from __future__ import annotations

import pytest

from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from tests.vendor_sdks import run_vendor_sdk

pytestmark = pytest.mark.timeout(900)

CLIENT = """
from openai import OpenAI
import openai
client = OpenAI(base_url={url!r} + "/v1", api_key={key!r}, max_retries=0)
"""


def test_sdk_chat_and_stream(
    openai_server: tuple[FakeOpenAI, str], openai_fake: FakeOpenAI
) -> None:
    _, url = openai_server
    result = run_vendor_sdk(
        "openai",
        CLIENT.format(url=url, key="sk-test")
        + """
answer = client.chat.completions.create(model="gpt-3.5-turbo",
    messages=[{"role": "user", "content": "hello there"}], max_tokens=50)
chunks = list(client.chat.completions.create(model="gpt-3.5-turbo",
    messages=[{"role": "user", "content": "hello there"}], stream=True,
    stream_options={"include_usage": True}))
result = {
    "text": answer.choices[0].message.content,
    "finish": answer.choices[0].finish_reason,
    "usage": answer.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}),
    "streamed": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    "stream_usage": [c.usage.model_dump(include={"prompt_tokens", "completion_tokens",
                     "total_tokens"}) for c in chunks if c.usage],
    "last_choices": chunks[-1].choices,
}
""",
    )
    assert result["text"] == "Echo: hello there"
    assert result["finish"] == "stop"
    assert result["usage"]["completion_tokens"] == 4
    assert result["streamed"] == result["text"]
    assert result["stream_usage"] == [result["usage"]]
    assert result["last_choices"] == []


@pytest.mark.parametrize(
    ("fault", "sdk_error", "status"),
    [
        (Fault.UNAUTHORIZED, "AuthenticationError", 401),
        (Fault.RATE_LIMITED, "RateLimitError", 429),
        (Fault.SERVER_ERROR, "InternalServerError", 500),
        (Fault.CONTEXT_TOO_LONG, "BadRequestError", 400),
    ],
)
def test_sdk_maps_fake_errors(
    openai_server: tuple[FakeOpenAI, str],
    openai_fake: FakeOpenAI,
    fault: Fault,
    sdk_error: str,
    status: int,
) -> None:
    _, url = openai_server
    openai_fake.inject(fault, retry_after=1)
    result = run_vendor_sdk(
        "openai",
        CLIENT.format(url=url, key="sk-test")
        + """
try:
    client.chat.completions.create(model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "hi"}])
    result = None
except openai.APIStatusError as exc:
    result = {"type": type(exc).__name__, "status": exc.status_code, "code": exc.code,
              "request_id": exc.request_id}
""",
    )
    assert result["type"] == sdk_error
    assert result["status"] == status
    assert result["request_id"].startswith("req_")


def test_sdk_sees_a_mid_stream_error(
    openai_server: tuple[FakeOpenAI, str], openai_fake: FakeOpenAI
) -> None:
    _, url = openai_server
    openai_fake.inject(Fault.MID_STREAM_ERROR)
    result = run_vendor_sdk(
        "openai",
        CLIENT.format(url=url, key="sk-test")
        + """
seen = []
try:
    for chunk in client.chat.completions.create(model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "one two three"}], stream=True):
        seen.append(chunk.choices[0].delta.content if chunk.choices else None)
    result = {"error": None}
except openai.APIError as exc:
    result = {"error": type(exc).__name__, "seen": seen}
""",
    )
    assert result["error"] == "APIError"
    assert len(result["seen"]) == 3
