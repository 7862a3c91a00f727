"""The official sensenova SDK (1.0.6), unchanged, against the fake SenseNova server: proof
that the fake's JWT check, JSON, stream framing (``data:[DONE]`` exactly, text/event-stream)
and error bodies are what the real client expects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.sensenova import TEST_ACCESS_KEY, TEST_SECRET_KEY, FakeSenseNova
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendor_sdks import run_vendor_sdk

pytestmark = pytest.mark.timeout(900)

CLIENT = """
import sensenova
sensenova.access_key_id = {ak!r}
sensenova.secret_access_key = {sk!r}
sensenova.api_base = {url!r} + "/v1"
messages = [{{"role": "user", "content": "hello there"}}]
"""


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeSenseNova, str]]:
    fake = FakeSenseNova()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(server: tuple[FakeSenseNova, str]) -> Iterator[FakeSenseNova]:
    fake, _ = server
    fake.clear_faults()
    fake.requests.clear()
    yield fake
    fake.clear_faults()


def client(url: str, secret: str = TEST_SECRET_KEY) -> str:
    return CLIENT.format(ak=TEST_ACCESS_KEY, sk=secret, url=url)


def test_sdk_chat_stream_and_knowledge(
    server: tuple[FakeSenseNova, str], fake: FakeSenseNova
) -> None:
    _, url = server
    result = run_vendor_sdk(
        "sensenova",
        client(url)
        + """
answer = sensenova.ChatCompletion.create(model="SenseChat-5", messages=messages,
    max_new_tokens=50, repetition_penalty=1.05, temperature=0.8, top_p=0.7)
chunks = list(sensenova.ChatCompletion.create(model="SenseChat-5", messages=messages,
    stream=True))
rag = sensenova.ChatCompletion.create(model="SenseChat-5", messages=messages,
    know_ids=["kb-1"], knowledge_config={"control_level": "normal",
    "knowledge_base_result": True})
data = answer["data"]
result = {
    "text": data["choices"][0]["message"],
    "finish": data["choices"][0]["finish_reason"],
    "usage": dict(data["usage"]),
    "request_id": answer.headers()["X-Request-Id"],
    "id": data["id"],
    "streamed": "".join(c["data"]["choices"][0]["delta"] for c in chunks),
    "stream_finish": chunks[-1]["data"]["choices"][0]["finish_reason"],
    "stream_usage": dict(chunks[-1]["data"]["usage"]),
    "knowledge": [dict(r) for r in rag["data"]["knowledge_base_results"]],
    "knowledge_tokens": rag["data"]["usage"]["knowledge_tokens"],
}
""",
    )
    assert result["text"] == "Echo: hello there"
    assert result["finish"] == "stop"
    assert result["usage"] == {
        "prompt_tokens": 2,
        "knowledge_tokens": 0,
        "completion_tokens": 4,
        "total_tokens": 6,
    }
    assert result["request_id"] == result["id"]
    assert result["streamed"] == result["text"]
    assert result["stream_finish"] == "stop"
    assert result["stream_usage"] == result["usage"]
    assert result["knowledge"][0]["know_id"] == "kb-1"
    assert result["knowledge_tokens"] > 0
    claims = fake.requests[0]["claims"]
    assert claims["iss"] == TEST_ACCESS_KEY and claims["exp"] - claims["nbf"] == 1805
    assert fake.requests[0]["body"]["repetition_penalty"] == 1.05
    assert fake.requests[0]["headers"]["user-agent"].startswith("Sensenova/v1 PythonBindings/")


def test_sdk_maps_fake_errors(server: tuple[FakeSenseNova, str], fake: FakeSenseNova) -> None:
    _, url = server
    for fault in (
        Fault.UNAUTHORIZED,
        Fault.RATE_LIMITED,
        Fault.SERVER_ERROR,
        Fault.CONTEXT_TOO_LONG,
        Fault.TOKEN_EXPIRED,
    ):
        fake.inject(fault, retry_after=1)
    result = run_vendor_sdk(
        "sensenova",
        client(url)
        + """
seen = []
for _ in range(5):
    try:
        sensenova.ChatCompletion.create(model="SenseChat-5", messages=messages)
        seen.append(None)
    except sensenova.error.SensenovaError as exc:
        seen.append({"type": type(exc).__name__, "status": exc.http_status,
                     "message": exc.json_body["error"]["message"],
                     "code": exc.json_body["error"]["code"]})
result = seen
""",
    )
    assert [(r["type"], r["status"], r["code"]) for r in result] == [
        ("AuthenticationError", 401, 16),
        ("RateLimitError", 429, 8),
        ("APIError", 500, 13),
        ("InvalidRequestError", 400, 3),
        ("AuthenticationError", 401, 16),
    ]
    assert "context length" in result[3]["message"]
    assert "expired" in result[4]["message"]


def test_sdk_sees_bad_keys_and_a_mid_stream_error(
    server: tuple[FakeSenseNova, str], fake: FakeSenseNova
) -> None:
    _, url = server
    fake.inject(Fault.MID_STREAM_ERROR)
    result = run_vendor_sdk(
        "sensenova",
        client(url)
        + """
seen = []
try:
    for chunk in sensenova.ChatCompletion.create(model="SenseChat-5",
            messages=[{"role": "user", "content": "one two three"}], stream=True):
        seen.append(chunk["data"]["choices"][0]["delta"])
    stream_error = None
except sensenova.error.APIError as exc:
    stream_error = str(exc)
sensenova.secret_access_key = "sk-wrong-0123456789abcdef0123456789abcdef"
try:
    sensenova.ChatCompletion.create(model="SenseChat-5", messages=messages)
    auth_error = None
except sensenova.error.AuthenticationError as exc:
    auth_error = str(exc)
result = {"seen": seen, "stream_error": stream_error, "auth_error": auth_error}
""",
    )
    assert result["seen"] == ["Echo", ":"]
    assert "(Error occurred while streaming.)" in result["stream_error"]
    assert "invalid signature" in result["auth_error"]
