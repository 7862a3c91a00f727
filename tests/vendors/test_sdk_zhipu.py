"""The official zhipuai SDK (2.1.5), unchanged, against the fake Zhipu server: proof the fake
speaks the protocol the real client expects, with the plain key and with the SDK's own JWT."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.zhipu import FakeZhipu
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendor_sdks import run_vendor_sdk

pytestmark = pytest.mark.timeout(900)

KEY = "zhipu-test-id.zhipu-test-secret"

CLIENT = """
import zhipuai
from zhipuai import ZhipuAI
client = ZhipuAI(api_key={key!r}, base_url={url!r} + "/api/paas/v4", max_retries=0,
                 disable_token_cache={plain!r})
"""


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
    yield fake
    fake.clear_faults()


@pytest.mark.parametrize("plain", [True, False], ids=["plain-key", "sdk-jwt"])
def test_sdk_chat_and_stream(
    zhipu_server: tuple[FakeZhipu, str], zhipu_fake: FakeZhipu, plain: bool
) -> None:
    _, url = zhipu_server
    result = run_vendor_sdk(
        "zhipuai",
        CLIENT.format(key=KEY, url=url, plain=plain)
        + """
messages = [{"role": "user", "content": "hello there"}]
answer = client.chat.completions.create(model="glm-4", messages=messages, temperature=0.5)
chunks = list(client.chat.completions.create(model="glm-4", messages=messages, stream=True))
usage = lambda u: {"prompt": u.prompt_tokens, "completion": u.completion_tokens,
                   "total": u.total_tokens}
result = {
    "text": answer.choices[0].message.content,
    "finish": answer.choices[0].finish_reason,
    "usage": usage(answer.usage),
    "request_id": answer.request_id,
    "id": answer.id,
    "streamed": "".join(c.choices[0].delta.content or "" for c in chunks),
    "stream_finish": [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason],
    "stream_usage": [usage(c.usage) for c in chunks if c.usage],
    "stream_ids": sorted({c.id for c in chunks}),
}
""",
    )
    assert result["text"] == "Echo: hello there"
    assert result["finish"] == "stop"
    assert result["usage"] == {"prompt": 2, "completion": 4, "total": 6}
    assert result["request_id"] == result["id"] and result["id"].isdigit()
    assert result["streamed"] == result["text"]
    assert result["stream_finish"] == ["stop"]
    assert result["stream_usage"] == [result["usage"]]  # only on the finish chunk
    assert len(result["stream_ids"]) == 1
    authorization = zhipu_fake.last_request["headers"]["authorization"]
    assert authorization.startswith("Bearer ")
    assert (authorization == f"Bearer {KEY}") is plain  # else the SDK's own JWT passed


def test_sdk_maps_fake_errors(zhipu_server: tuple[FakeZhipu, str], zhipu_fake: FakeZhipu) -> None:
    _, url = zhipu_server
    faults = [
        Fault.UNAUTHORIZED,
        Fault.TOKEN_EXPIRED,
        Fault.RATE_LIMITED,
        Fault.SERVER_ERROR,
        Fault.CONTEXT_TOO_LONG,
        Fault.CONTENT_FILTERED,
    ]
    for fault in faults:
        zhipu_fake.inject(fault, retry_after=1)
    result = run_vendor_sdk(
        "zhipuai",
        CLIENT.format(key=KEY, url=url, plain=False)
        + f"""
result = []
for _ in range({len(faults)}):
    try:
        client.chat.completions.create(model="glm-4",
            messages=[{{"role": "user", "content": "hi"}}])
        result.append(None)
    except zhipuai.APIStatusError as exc:
        result.append([type(exc).__name__, exc.status_code,
                       exc.response.json()["error"]["code"]])
""",
    )
    assert result == [
        ["APIAuthenticationError", 401, "1000"],
        ["APIAuthenticationError", 401, "1003"],
        ["APIReachLimitError", 429, "1302"],
        ["APIInternalError", 500, "500"],
        ["APIRequestFailedError", 400, "1261"],
        ["APIRequestFailedError", 400, "1301"],
    ]


def test_sdk_jwt_with_a_wrong_secret_is_refused(
    zhipu_server: tuple[FakeZhipu, str], zhipu_fake: FakeZhipu
) -> None:
    _, url = zhipu_server
    result = run_vendor_sdk(
        "zhipuai",
        CLIENT.format(key="zhipu-test-id.wrong-secret", url=url, plain=False)
        + """
try:
    client.chat.completions.create(model="glm-4", messages=[{"role": "user", "content": "hi"}])
    result = None
except zhipuai.APIAuthenticationError as exc:
    result = exc.response.json()
""",
    )
    assert result["error"]["code"] == "1004"


def test_sdk_sees_a_mid_stream_error(
    zhipu_server: tuple[FakeZhipu, str], zhipu_fake: FakeZhipu
) -> None:
    _, url = zhipu_server
    zhipu_fake.inject(Fault.MID_STREAM_ERROR)
    result = run_vendor_sdk(
        "zhipuai",
        CLIENT.format(key=KEY, url=url, plain=True)
        + """
seen = []
try:
    for chunk in client.chat.completions.create(model="glm-4",
            messages=[{"role": "user", "content": "one two three"}], stream=True):
        seen.append(chunk.choices[0].delta.content)
    result = {"error": None}
except zhipuai.APIResponseError as exc:
    result = {"error": type(exc).__name__, "data": exc.json_data, "seen": seen}
""",
    )
    assert result["error"] == "APIResponseError"
    assert result["data"]["code"] == "500"
    assert result["seen"] == ["Echo", ":"]
