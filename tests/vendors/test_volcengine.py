"""Volcengine MaaS v1 (Skylark) against the fake MaaS server, over real loopback HTTP: what
only it does (signing, its wire format); what every vendor shares is in ``test_contract.py``."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import SecretStr

from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    RateLimitError,
)
from fengchao_chains.llms.volcengine import ChatVolcengineMaas, sign_request, signature_v4
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.volcengine import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    FakeVolcengineMaas,
)
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.checks import summed, tuned
from tests.vendors.harness import VOLCENGINE

# A signature computed by the official SDK (volcengine 1.0.229 ``SignerV4.sign``, date fixed
# at 20240102T030405Z) for the request below; test_sdk_volcengine re-derives it live.
SDK_BODY = json.dumps(
    {
        "model": {"name": "skylark-lite-public"},
        "messages": [{"role": "user", "content": "天为什么这么蓝"}],
    },
    ensure_ascii=False,
).encode()
SDK_SIGNATURE = "33ffce665c42301a58cf704b00007da6eacd015df27e5d8059b9c4c1a598e4d4"


def signed_headers(url: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
    """Headers of a request to the fake signed with its known key, as a raw client would."""
    headers = {"Host": url.removeprefix("http://"), "Content-Type": "application/json"}
    return headers | sign_request(
        "POST",
        f"{url}/api/v1/chat",
        headers,
        body,
        access_key=FAKE_ACCESS_KEY,
        secret_key=FAKE_SECRET_KEY,
        region="cn-beijing",
        now=now,
    )


maas_fake, url, model = VOLCENGINE.fixtures(fake="maas_fake")


# ------------------------------------------------------------------ defaults


def test_default_endpoint_and_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLC_ACCESSKEY", "ak-env")
    monkeypatch.setenv("VOLC_SECRETKEY", "sk-env")
    chat = ChatVolcengineMaas(model="skylark-chat")
    assert chat._url("/api/v1/chat") == (
        "https://maas-api.ml-platform-cn-beijing.volces.com/api/v1/chat"
    )
    assert chat.region == "cn-beijing"
    assert chat.api_key is not None and chat.api_key.get_secret_value() == "ak-env"
    assert chat.secret_key is not None and chat.secret_key.get_secret_value() == "sk-env"


# ------------------------------------------------------------------ wire format


def test_payload_maps_standard_parameters(
    model: ChatVolcengineMaas, maas_fake: FakeVolcengineMaas
) -> None:
    tuned_model = tuned(
        model, model_version="1.0", model_kwargs={"top_k": 5, "repetition_penalty": 1.1}
    )
    tuned_model.invoke(
        [SystemMessage("be brief"), HumanMessage("hi")], stop=["\n\n"], req_id="my-req-1"
    )
    body = maas_fake.last_request["body"]
    assert body["model"] == {"name": "skylark-lite-public", "version": "1.0"}
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert body["parameters"] == {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_new_tokens": 50,
        "stop": ["\n\n"],
        "top_k": 5,
        "repetition_penalty": 1.1,
    }
    assert body["stream"] is False
    assert body["req_id"] == "my-req-1"


async def test_per_call_model_overrides_the_field(
    model: ChatVolcengineMaas, maas_fake: FakeVolcengineMaas
) -> None:
    answer = model.invoke("hi", model="Skylark2-pro-32k")
    assert maas_fake.last_request["body"]["model"]["name"] == "Skylark2-pro-32k"
    assert answer.response_metadata["model_name"] == "Skylark2-pro-32k"
    chunks = [c async for c in model.astream("hi", model="skylark-pro-public")]
    assert maas_fake.last_request["body"]["stream"] is True
    assert summed(chunks).response_metadata["model_name"] == "skylark-pro-public"
    assert model.invoke("hi").response_metadata["model_name"] == "skylark-lite-public"


def test_answer_carries_usage_and_the_vendor_request_id(model: ChatVolcengineMaas) -> None:
    answer = model.invoke("hello there")
    assert isinstance(answer, AIMessage)
    assert answer.usage_metadata == {"input_tokens": 2, "output_tokens": 4, "total_tokens": 6}
    request_id = answer.response_metadata["request_id"]
    assert len(request_id) == 26 and request_id[:8].isdigit()


def test_fake_stream_framing_is_the_sdks(
    volcengine_server: tuple[FakeVolcengineMaas, str], maas_fake: FakeVolcengineMaas
) -> None:
    """``data:`` with no space and the exact ``data:[DONE]`` the SDK compares against."""
    _, url = volcengine_server
    chat = {"model": {"name": "skylark-chat"}, "messages": [{"role": "user", "content": "hi"}]}
    body = json.dumps({**chat, "parameters": {}, "stream": True}).encode()
    headers = signed_headers(url, body)
    response = httpx.post(f"{url}/api/v1/chat", content=body, headers=headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data:{") for e in events[:-1])
    assert events[-1] == "data:[DONE]"
    last = json.loads(events[-2].removeprefix("data:"))
    assert last["choice"]["finish_reason"] == "stop"
    assert last["usage"]["completion_tokens"] == len(events) - 1  # one token per event


# ------------------------------------------------------------------ signing


def test_signature_matches_the_official_sdk_vector() -> None:
    signed = sign_request(
        "POST",
        "http://127.0.0.1:8080/api/v1/chat",
        {"Host": "127.0.0.1:8080", "Content-Type": "application/json"},
        SDK_BODY,
        access_key="AKLTexample",
        secret_key="c2VjcmV0==",
        region="cn-beijing",
        now=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert signed["X-Date"] == "20240102T030405Z"
    assert signed["X-Content-Sha256"] == hashlib.sha256(SDK_BODY).hexdigest()
    assert signed["Authorization"] == (
        "HMAC-SHA256 Credential=AKLTexample/20240102/cn-beijing/ml_maas/request, "
        f"SignedHeaders=content-type;host;x-content-sha256;x-date, Signature={SDK_SIGNATURE}"
    )


def test_signature_covers_query_and_default_ports() -> None:
    common = {
        "secret_key": "sk",
        "method": "POST",
        "path": "/api/v1/chat",
        "body_sha256": "0" * 64,
        "x_date": "20240102T030405Z",
        "region": "cn-beijing",
    }
    plain = signature_v4(query=[], headers={"host": "h.example"}, **common)
    assert plain == signature_v4(query=[], headers={"host": "h.example:443"}, **common)
    assert plain != signature_v4(query=[("a", "1")], headers={"host": "h.example"}, **common)


def test_requests_are_signed_over_the_exact_body(
    model: ChatVolcengineMaas, maas_fake: FakeVolcengineMaas
) -> None:
    model.invoke("签名 check")
    headers = maas_fake.last_request["headers"]
    assert headers["authorization"].startswith(f"HMAC-SHA256 Credential={FAKE_ACCESS_KEY}/")
    assert "SignedHeaders=content-type;host;x-content-sha256;x-date," in headers["authorization"]
    sent = json.dumps(maas_fake.last_request["body"], ensure_ascii=False).encode()
    assert headers["x-content-sha256"] == hashlib.sha256(sent).hexdigest()
    assert FAKE_SECRET_KEY not in json.dumps(headers)


def test_wrong_secret_key_is_rejected_by_the_signature_check(
    model: ChatVolcengineMaas, maas_fake: FakeVolcengineMaas
) -> None:
    wrong = model.model_copy(update={"secret_key": SecretStr("not-the-secret")})
    with pytest.raises(AuthenticationError) as caught:
        wrong.invoke("hi")
    assert caught.value.status_code == 401
    assert caught.value.code == "SignatureDoesNotMatch"
    assert caught.value.request_id
    assert len(maas_fake.requests) == 1  # authentication errors are not retried


def test_unknown_access_key_is_rejected(
    model: ChatVolcengineMaas, maas_fake: FakeVolcengineMaas
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        model.model_copy(update={"api_key": SecretStr("AKLTnobody")}).invoke("hi")
    assert caught.value.code == "AuthenticationHeaderIsInvalid"


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        ("body", "SignatureDoesNotMatch"),
        ("stale", "SignatureDoesNotMatch"),
        ("unsigned", "MissingAuthenticationHeader"),
    ],
)
def test_fake_rejects_tampered_requests(
    volcengine_server: tuple[FakeVolcengineMaas, str],
    maas_fake: FakeVolcengineMaas,
    tamper: str,
    code: str,
) -> None:
    _, url = volcengine_server
    body = json.dumps(
        {"model": {"name": "skylark-chat"}, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    when = datetime.now(UTC) - (timedelta(hours=1) if tamper == "stale" else timedelta())
    headers = signed_headers(url, body, now=when)
    if tamper == "unsigned":
        del headers["Authorization"]
    sent = body.replace(b"hi", b"ho") if tamper == "body" else body
    response = httpx.post(f"{url}/api/v1/chat", content=sent, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert str(response.json()["error"]["code_n"]).startswith("17098")


def test_missing_credentials_fail_before_any_request(
    volcengine_server: tuple[FakeVolcengineMaas, str], maas_fake: FakeVolcengineMaas
) -> None:
    _, url = volcengine_server
    chat = ChatVolcengineMaas(model="skylark-chat", api_key=FAKE_ACCESS_KEY, base_url=url)
    with pytest.raises(AuthenticationError, match="VOLC_SECRETKEY"):
        chat.invoke("hi")
    assert maas_fake.requests == []


# ------------------------------------------------------------------ errors and retries


def test_the_callers_req_id_names_the_failed_request(
    model: ChatVolcengineMaas, maas_fake: FakeVolcengineMaas
) -> None:
    maas_fake.inject(Fault.RATE_LIMITED, times=5, retry_after=0)
    with pytest.raises(RateLimitError) as caught:
        model.invoke("hi", req_id="trace-42")
    assert caught.value.request_id == "trace-42"


def test_error_inside_a_200_answer_is_raised() -> None:
    """The SDK treats any ``error`` with a non-zero ``code_n`` as a failure; so do we."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:
        error = {"code": "RespTextExistRisk", "code_n": 1709814, "message": "risky answer"}
        return JSONResponse({"req_id": "r-200", "error": error})

    app = Starlette(routes=[Route("/api/v1/chat", chat, methods=["POST"])])
    with serve_in_thread(app) as url:
        chat_model = ChatVolcengineMaas(
            model="skylark-chat", api_key="ak", secret_key="sk", base_url=url
        )
        with pytest.raises(ContentFilteredError) as caught:
            chat_model.invoke("hi")
    assert caught.value.request_id == "r-200"
    assert caught.value.code == "RespTextExistRisk"
