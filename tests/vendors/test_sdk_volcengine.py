"""The official volcengine SDK (MaaS v1 ``MaasService`` and ``SignerV4``), unchanged, against
the fake MaaS server: proof that our signer matches Volcengine's and that the fake speaks
the protocol the real client expects (signature checks included)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from fengchao_chains.llms.volcengine import sign_request
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.volcengine import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    FakeVolcengineMaas,
)
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendor_sdks import run_vendor_sdk

pytestmark = pytest.mark.timeout(900)

CLIENT = """
from volcengine.maas import MaasService, MaasException
maas = MaasService({host!r}, "cn-beijing")
maas.service_info.scheme = "http"  # the SDK hard-codes https; the fake is plain HTTP
maas.set_ak({ak!r})
maas.set_sk({sk!r})
def request(text, **parameters):
    return {{"model": {{"name": "skylark-pro-public"}},
            "messages": [{{"role": "user", "content": text}}],
            "parameters": {{"max_new_tokens": 100, "temperature": 0.8, **parameters}}}}
"""


@pytest.fixture(scope="module")
def maas_server() -> Iterator[tuple[FakeVolcengineMaas, str]]:
    fake = FakeVolcengineMaas()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def maas_fake(maas_server: tuple[FakeVolcengineMaas, str]) -> Iterator[FakeVolcengineMaas]:
    fake, _ = maas_server
    fake.clear_faults()
    fake.requests.clear()
    yield fake
    fake.clear_faults()


def client(url: str, sk: str = FAKE_SECRET_KEY) -> str:
    return CLIENT.format(host=url.removeprefix("http://"), ak=FAKE_ACCESS_KEY, sk=sk)


@pytest.mark.parametrize(
    ("path", "query", "body"),
    [
        ("/api/v1/chat", {}, {"model": {"name": "skylark-chat"}, "messages": []}),
        ("/api/v1/chat", {"Action": "Chat", "b c": "x/y"}, {"text": "天为什么这么蓝？"}),
    ],
)
def test_signer_matches_the_sdks_signer_v4(path: str, query: dict[str, str], body: object) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode()
    sdk = run_vendor_sdk(
        "volcengine",
        f"""
from volcengine.auth.SignerV4 import SignerV4
from volcengine.base.Request import Request
from volcengine.Credentials import Credentials
SignerV4.get_current_format_date = staticmethod(lambda: "20240607T080910Z")
r = Request()
r.set_method("POST"); r.set_path({path!r}); r.set_host("maas.example:8443")
r.set_headers({{"Accept": "application/json", "Host": "maas.example:8443",
               "User-Agent": "volc-sdk-python", "Content-Type": "application/json"}})
r.set_query(dict({query!r}))
r.body = {raw!r}
SignerV4.sign(r, Credentials("AKLTsdk", "c2RrLXNlY3JldA==", "ml_maas", "cn-beijing"))
result = {{k: r.headers[k] for k in ("X-Date", "X-Content-Sha256", "Authorization")}}
""",
    )
    ours = sign_request(
        "POST",
        "http://maas.example:8443" + path + ("?" + _query(query) if query else ""),
        {"Host": "maas.example:8443", "Content-Type": "application/json"},
        raw,
        access_key="AKLTsdk",
        secret_key="c2RrLXNlY3JldA==",
        region="cn-beijing",
        now=datetime(2024, 6, 7, 8, 9, 10, tzinfo=UTC),
    )
    assert ours == sdk
    assert sdk["X-Content-Sha256"] == hashlib.sha256(raw).hexdigest()


def _query(query: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(query)


def test_sdk_chat_and_stream(
    maas_server: tuple[FakeVolcengineMaas, str], maas_fake: FakeVolcengineMaas
) -> None:
    _, url = maas_server
    result = run_vendor_sdk(
        "volcengine",
        client(url)
        + """
answer = maas.chat(request("hello there"))
chunks = list(maas.stream_chat(request("hello there")))
cut = maas.chat(request("one two three four five", max_new_tokens=2))
result = {
    "text": answer.choice.message.content,
    "finish": answer.choice.finish_reason,
    "usage": dict(answer.usage),
    "req_id": answer.req_id,
    "streamed": "".join(c.choice.message.content for c in chunks),
    "stream_usage": [dict(c.usage) for c in chunks if c.usage],
    "stream_finish": chunks[-1].choice.finish_reason,
    "stream_req_ids": sorted({c.req_id for c in chunks}),
    "cut": [cut.choice.message.content, cut.choice.finish_reason],
}
""",
    )
    assert result["text"] == "Echo: hello there"
    assert result["finish"] == "stop"
    assert result["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert result["req_id"]
    assert result["streamed"] == result["text"]
    assert result["stream_usage"] == [result["usage"]]  # usage on the last chunk only
    assert result["stream_finish"] == "stop"
    assert len(result["stream_req_ids"]) == 1
    assert result["cut"] == ["Echo:", "length"]
    body = maas_fake.requests[0]["body"]
    assert body["stream"] is False and body["model"] == {"name": "skylark-pro-public"}
    assert maas_fake.requests[1]["body"]["stream"] is True


def test_sdk_maps_fake_errors(
    maas_server: tuple[FakeVolcengineMaas, str], maas_fake: FakeVolcengineMaas
) -> None:
    _, url = maas_server
    faults = [
        Fault.UNAUTHORIZED,
        Fault.RATE_LIMITED,
        Fault.SERVER_ERROR,
        Fault.CONTEXT_TOO_LONG,
        Fault.CONTENT_FILTERED,
    ]
    for fault in faults:
        maas_fake.inject(fault, retry_after=1)
    maas_fake.inject(Fault.RATE_LIMITED)  # once more, for the stream call
    result = run_vendor_sdk(
        "volcengine",
        client(url)
        + f"""
caught = []
for _ in range({len(faults)}):
    try:
        maas.chat(request("hi"))
        caught.append(None)
    except MaasException as exc:
        caught.append([exc.code_n, exc.code, exc.req_id])
try:
    maas.stream_chat(request("hi"))
    caught.append(None)
except MaasException as exc:
    caught.append([exc.code_n, exc.code, exc.req_id])
result = caught
""",
    )
    assert [r[:2] for r in result] == [
        [1709801, "SignatureDoesNotMatch"],
        [1709815, "EndpointRateLimitExceeded"],
        [1709806, "InternalServiceError"],
        [1709808, "InvalidParameter"],
        [1709813, "ReqTextExistRisk"],
        [1709815, "EndpointRateLimitExceeded"],
    ]
    assert all(r[2] for r in result)


def test_fake_verifies_the_sdks_signatures(
    maas_server: tuple[FakeVolcengineMaas, str], maas_fake: FakeVolcengineMaas
) -> None:
    """A wrong secret key makes the fake's signature check fail, in both call styles."""
    _, url = maas_server
    result = run_vendor_sdk(
        "volcengine",
        client(url, sk="d3Jvbmctc2VjcmV0")
        + """
caught = []
for call in (maas.chat, maas.stream_chat):
    try:
        call(request("hi"))
        caught.append(None)
    except MaasException as exc:
        caught.append([exc.code_n, exc.code])
result = caught
""",
    )
    assert result == [[1709801, "SignatureDoesNotMatch"]] * 2
    assert maas_fake.requests[0]["headers"]["authorization"].startswith(
        f"HMAC-SHA256 Credential={FAKE_ACCESS_KEY}/"
    )


def test_sdk_sees_a_mid_stream_error(
    maas_server: tuple[FakeVolcengineMaas, str], maas_fake: FakeVolcengineMaas
) -> None:
    _, url = maas_server
    maas_fake.inject(Fault.MID_STREAM_ERROR)
    result = run_vendor_sdk(
        "volcengine",
        client(url)
        + """
seen = []
try:
    for chunk in maas.stream_chat(request("one two three four")):
        seen.append(chunk.choice.message.content)
    result = {"error": None, "seen": seen}
except MaasException as exc:
    result = {"error": [exc.code_n, exc.code], "req_id": exc.req_id, "seen": seen}
""",
    )
    assert result["error"] == [1709806, "InternalServiceError"]
    assert result["req_id"]
    assert result["seen"] == ["Echo", ":"]
