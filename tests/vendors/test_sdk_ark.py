"""volcengine-ark-runtime, unchanged, against the fake Ark server: v3 chat and bot_chat
(both with and without streaming, references and bot_usage parsed into the SDK's types),
and the SDK's error classes for Ark's error bodies and for an error chunk mid-stream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.ark import FakeArk
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendor_sdks import run_vendor_sdk

pytestmark = pytest.mark.timeout(900)

CLIENT = """
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkAPIError, ArkAPIStatusError
client = Ark(base_url={url!r} + "/api/v3", api_key="ark-test-key", max_retries=0)
"""


@pytest.fixture(scope="module")
def ark_server() -> Iterator[tuple[FakeArk, str]]:
    fake = FakeArk(api_keys={"ark-test-key"})
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(ark_server: tuple[FakeArk, str]) -> Iterator[FakeArk]:
    server, _ = ark_server
    server.clear_faults()
    server.requests.clear()
    yield server
    server.clear_faults()


def test_sdk_chat_and_bot_chat(ark_server: tuple[FakeArk, str], fake: FakeArk) -> None:
    _, url = ark_server
    result = run_vendor_sdk(
        "volcengine",
        CLIENT.format(url=url)
        + """
messages = [{"role": "user", "content": "hello there"}]
usage_of = lambda u: {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}
answer = client.chat.completions.create(model="ep-20240601123456-abcde", messages=messages)
chunks = list(client.chat.completions.create(model="ep-20240601123456-abcde",
    messages=messages, stream=True, stream_options={"include_usage": True}))
bot = client.bot_chat.completions.create(model="bot-20240601123456-xyz12", messages=messages)
bot_chunks = list(client.bot_chat.completions.create(model="bot-20240601123456-xyz12",
    messages=messages, stream=True, stream_options={"include_usage": True}))
result = {
    "text": answer.choices[0].message.content,
    "finish": answer.choices[0].finish_reason,
    "usage": usage_of(answer.usage),
    "streamed": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    "stream_usage": [usage_of(c.usage) for c in chunks if c.usage],
    "bot_text": bot.choices[0].message.content,
    "bot_usage": usage_of(bot.usage),
    "bot_models": [(m.name, m.prompt_tokens, m.completion_tokens)
                   for m in bot.bot_usage.model_usage],
    "bot_actions": [(a.name, a.search_count) for a in bot.bot_usage.action_usage],
    "bot_references": [(r.url, r.site_name, r.title) for r in bot.references],
    "bot_streamed": "".join(c.choices[0].delta.content or "" for c in bot_chunks if c.choices),
    "bot_stream_references": [r.title for c in bot_chunks for r in (c.references or [])],
    "bot_stream_models": [len(c.bot_usage.model_usage) for c in bot_chunks if c.bot_usage],
}
""",
    )
    assert result["text"] == "Echo: hello there"
    assert result["finish"] == "stop"
    assert result["usage"] == {"prompt_tokens": 2, "completion_tokens": 4}
    assert result["streamed"] == result["text"]
    assert result["stream_usage"] == [result["usage"]]
    assert result["bot_text"] == "Echo: hello there"
    assert result["bot_models"] == [
        ["ep-bot-20240601123456-xyz12-answer", 2, 4],
        ["ep-bot-20240601123456-xyz12-planner", 12, 3],
    ]
    assert result["bot_usage"] == {"prompt_tokens": 14, "completion_tokens": 7}
    assert result["bot_actions"] == [["web_search", 1]]
    assert result["bot_references"] == [
        ["https://search.example.com/?q=hello%20there", "Example Search", "About hello there"]
    ]
    assert result["bot_streamed"] == result["bot_text"]
    assert result["bot_stream_references"] == ["About hello there"]
    assert result["bot_stream_models"] == [2]
    assert fake.requests[-1]["path"] == "/api/v3/bots/chat/completions"


@pytest.mark.parametrize(
    ("fault", "sdk_error", "status", "code"),
    [
        (Fault.UNAUTHORIZED, "ArkAuthenticationError", 401, "AuthenticationError"),
        (Fault.RATE_LIMITED, "ArkRateLimitError", 429, "RateLimitExceeded.EndpointRPMExceeded"),
        (Fault.SERVER_ERROR, "ArkInternalServerError", 500, "InternalServiceError"),
        (Fault.CONTENT_FILTERED, "ArkBadRequestError", 400, "SensitiveContentDetected"),
        (Fault.CONTEXT_TOO_LONG, "ArkBadRequestError", 400, "InvalidParameter"),
    ],
)
def test_sdk_maps_fake_errors(
    ark_server: tuple[FakeArk, str],
    fake: FakeArk,
    *,
    fault: Fault,
    sdk_error: str,
    status: int,
    code: str,
) -> None:
    _, url = ark_server
    fake.inject(fault, retry_after=1)
    fake.inject(fault, retry_after=1)
    result = run_vendor_sdk(
        "volcengine",
        CLIENT.format(url=url)
        + """
result = {}
for name, create in (("chat", client.chat.completions.create),
                     ("bot", client.bot_chat.completions.create)):
    try:
        create(model="ep-x" if name == "chat" else "bot-x",
               messages=[{"role": "user", "content": "hi"}])
        result[name] = None
    except ArkAPIStatusError as exc:
        result[name] = {"type": type(exc).__name__, "status": exc.status_code, "code": exc.code,
                        "type_field": exc.type, "message": exc.message}
""",
    )
    for name in ("chat", "bot"):
        assert result[name]["type"] == sdk_error, name
        assert result[name]["status"] == status
        assert result[name]["code"] == code
        assert "Request id: 0217" in result[name]["message"]


def test_sdk_sees_an_error_chunk_mid_stream(ark_server: tuple[FakeArk, str], fake: FakeArk) -> None:
    _, url = ark_server
    fake.inject(Fault.MID_STREAM_ERROR)
    fake.inject(Fault.MID_STREAM_ERROR)
    result = run_vendor_sdk(
        "volcengine",
        CLIENT.format(url=url)
        + """
result = {}
for name, create in (("chat", client.chat.completions.create),
                     ("bot", client.bot_chat.completions.create)):
    seen = []
    try:
        for chunk in create(model="ep-x" if name == "chat" else "bot-x", stream=True,
                            messages=[{"role": "user", "content": "one two three"}]):
            seen.append(chunk.choices[0].delta.content if chunk.choices else None)
        result[name] = None
    except ArkAPIError as exc:
        result[name] = {"type": type(exc).__name__, "code": exc.code, "seen": seen}
""",
    )
    for name in ("chat", "bot"):
        assert result[name]["type"] == "ArkAPIError", name
        assert result[name]["code"] == "InternalServiceError"
        assert len(result[name]["seen"]) == 3  # the opening chunk and "Echo", ":"
