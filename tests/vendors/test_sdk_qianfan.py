"""The official qianfan SDK (0.4.12.3), unchanged, against the fake Qianfan server: proof the
fake speaks the protocol the real client expects (OAuth token, chat route, ``data: `` stream
framing, errors in 200 bodies, token refresh on 111).

The SDK is kept offline: app AK/SK only (so it never lists services from the console API),
and every other host it knows of points at the fake too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.qianfan import CHAT_ROUTE, FakeQianfan
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendor_sdks import run_vendor_sdk

pytestmark = pytest.mark.timeout(900)

CHAT_PREFIX = CHAT_ROUTE.removesuffix("{endpoint}")
CLIENT = """
import qianfan
import qianfan.errors
chat = qianfan.ChatCompletion()
def sdk_error(call):
    try:
        call()
    except qianfan.errors.QianfanError as exc:
        return {"type": type(exc).__name__, "code": getattr(exc, "error_code", None),
                "message": str(exc), "req_id": getattr(exc, "req_id", None)}
    return None
"""


@pytest.fixture(scope="module")
def qianfan_server() -> Iterator[tuple[FakeQianfan, str]]:
    fake = FakeQianfan()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(qianfan_server: tuple[FakeQianfan, str]) -> Iterator[FakeQianfan]:
    served, _ = qianfan_server
    served.clear_faults()
    served.requests.clear()
    served.token_requests = 0
    yield served
    served.clear_faults()


def run_sdk(url: str, home: Path, script: str, **env: str) -> Any:
    return run_vendor_sdk(
        "qianfan",
        CLIENT + script,
        env={
            "HOME": str(home),
            "QIANFAN_BASE_URL": url,
            "QIANFAN_CONSOLE_API_BASE_URL": url,
            "QIANFAN_IAM_BASE_URL": url,
            "QIANFAN_AK": "qf-ak",
            "QIANFAN_SK": "qf-sk",
            "QIANFAN_ACCESS_TOKEN_REFRESH_MIN_INTERVAL": "0",
            "QIANFAN_LLM_API_RETRY_COUNT": "1",
            "QIANFAN_DISABLE_CACHE": "true",
            **env,
        },
    )


def test_sdk_chat_and_stream(
    qianfan_server: tuple[FakeQianfan, str], fake: FakeQianfan, tmp_path: Path
) -> None:
    _, url = qianfan_server
    result = run_sdk(
        url,
        tmp_path,
        """
answer = chat.do(model="ERNIE-Bot-4", system="你是一个导游",
                 messages=[{"role": "user", "content": "hello there"}])
chunks = [r["body"] for r in chat.do(endpoint="ngxxxol8_test1", stream=True,
          messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                    {"role": "user", "content": "hello there"}])]
import asyncio
async def run_async():
    answer = await chat.ado(model="Llama-2-7B-Chat",
                            messages=[{"role": "user", "content": "async one"}])
    streamed = [r["body"]["result"] async for r in await chat.ado(model="Llama-2-7B-Chat",
                stream=True, messages=[{"role": "user", "content": "async two"}])]
    return answer["body"]["result"], "".join(streamed)
result = {
    "text": answer["body"]["result"],
    "finish": answer["body"]["finish_reason"],
    "usage": answer["body"]["usage"],
    "streamed": "".join(c["result"] for c in chunks),
    "is_end": [c["is_end"] for c in chunks],
    "stream_usage": chunks[-1]["usage"],
    "async": list(asyncio.run(run_async())),
    "request_id": {k.lower(): v for k, v in answer["headers"].items()}["x-baidu-request-id"],
}
""",
    )
    assert result["text"] == "Echo: hello there"
    assert result["finish"] == "normal"
    assert result["usage"] == {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}
    assert result["streamed"] == "Echo: hello there"
    assert result["is_end"] == [False] * 4 + [True]
    assert result["stream_usage"]["completion_tokens"] == 4
    assert result["async"] == ["Echo: async one", "Echo: async two"]
    paths = [r["path"] for r in fake.requests]
    assert paths == [
        CHAT_PREFIX + "completions_pro",
        CHAT_PREFIX + "ngxxxol8_test1",
        CHAT_PREFIX + "llama_2_7b",
        CHAT_PREFIX + "llama_2_7b",
    ]
    assert fake.requests[0]["body"]["system"] == "你是一个导游"
    assert result["request_id"] == fake.requests[0]["headers"]["request_id"]
    assert fake.token_requests == 1


def test_sdk_refreshes_an_expired_token(
    qianfan_server: tuple[FakeQianfan, str], fake: FakeQianfan, tmp_path: Path
) -> None:
    _, url = qianfan_server
    fake.inject(Fault.TOKEN_EXPIRED)
    result = run_sdk(
        url,
        tmp_path,
        """
result = chat.do(endpoint="completions", messages=[{"role": "user", "content": "hi"}])["body"]
""",
    )
    assert result["result"] == "Echo: hi"
    assert fake.token_requests == 2
    assert fake.requests[0]["access_token"] != fake.requests[1]["access_token"]


def test_sdk_rejects_a_wrong_secret_key(
    qianfan_server: tuple[FakeQianfan, str], fake: FakeQianfan, tmp_path: Path
) -> None:
    _, url = qianfan_server
    result = run_sdk(
        url,
        tmp_path,
        """
result = sdk_error(lambda: chat.do(endpoint="completions",
                                   messages=[{"role": "user", "content": "hi"}]))
""",
        QIANFAN_SK="wrong-sk",
    )
    assert result["type"] == "AuthError"
    assert "SK(" in result["message"]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault.CONTEXT_TOO_LONG, 336103),
        (Fault.SERVER_ERROR, 336000),
        (Fault.UNAUTHORIZED, 6),
    ],
)
def test_sdk_maps_fake_errors(
    qianfan_server: tuple[FakeQianfan, str],
    fake: FakeQianfan,
    tmp_path: Path,
    fault: Fault,
    code: int,
) -> None:
    _, url = qianfan_server
    fake.inject(fault)
    result = run_sdk(
        url,
        tmp_path,
        """
result = sdk_error(lambda: chat.do(endpoint="completions",
                                   messages=[{"role": "user", "content": "hi"}]))
""",
    )
    assert result["type"] == "APIError"
    assert result["code"] == code
    assert result["req_id"].startswith("as-")


def test_sdk_sees_message_rules_rate_limits_and_filtering(
    qianfan_server: tuple[FakeQianfan, str], fake: FakeQianfan, tmp_path: Path
) -> None:
    _, url = qianfan_server
    fake.inject(Fault.RATE_LIMITED)  # the SDK retries error 18 itself
    result = run_sdk(
        url,
        tmp_path,
        """
user = {"role": "user", "content": "hi"}
retried = chat.do(endpoint="completions", messages=[user], retry_count=2,
                  backoff_factor=0.1)["body"]["result"]
even = sdk_error(lambda: chat.do(endpoint="completions",
                                 messages=[user, {"role": "assistant", "content": "a"}]))
result = {"retried": retried, "even": even}
""",
    )
    assert result["retried"] == "Echo: hi"
    assert result["even"]["code"] == 336006
    assert "odd" in result["even"]["message"]
    assert len(fake.requests) == 3  # 18, then the answer, then the refused even list


@pytest.mark.parametrize("stream", [False, True])
def test_sdk_sees_a_content_filter_flag(
    qianfan_server: tuple[FakeQianfan, str], fake: FakeQianfan, tmp_path: Path, stream: bool
) -> None:
    _, url = qianfan_server
    fake.inject(Fault.CONTENT_FILTERED)
    result = run_sdk(
        url,
        tmp_path,
        f"""
answer = chat.do(endpoint="completions", stream={stream},
                 messages=[{{"role": "user", "content": "something unsafe"}}])
body = list(answer)[-1]["body"] if {stream} else answer["body"]
result = {{"flag": body["need_clear_history"], "ban_round": body["ban_round"]}}
""",
    )
    assert result == {"flag": True, "ban_round": -1}


def test_sdk_sees_errors_on_and_in_a_stream(
    qianfan_server: tuple[FakeQianfan, str], fake: FakeQianfan, tmp_path: Path
) -> None:
    _, url = qianfan_server
    fake.inject(Fault.CONTEXT_TOO_LONG)  # the whole answer to a stream request is the error
    fake.inject(Fault.MID_STREAM_ERROR)
    result = run_sdk(
        url,
        tmp_path,
        """
user = {"role": "user", "content": "one two three four"}
opening = sdk_error(lambda: list(chat.do(endpoint="completions", messages=[user], stream=True)))
seen = []
def consume():
    for r in chat.do(endpoint="completions", messages=[user], stream=True):
        seen.append(r["body"]["result"])
middle = sdk_error(consume)
result = {"opening": opening, "middle": middle, "seen": seen}
""",
    )
    assert result["opening"]["code"] == 336103
    assert result["middle"]["code"] == 336000
    assert result["seen"] == ["Echo", ":"]
