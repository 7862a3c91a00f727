"""SenseNova's chat model against the fake SenseNova server (real HTTP on loopback); what every
vendor shares is in ``test_contract.py``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import jwt
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from fengchao_chains.catalog import load_catalog
from fengchao_chains.llms import sensenova
from fengchao_chains.llms._http import VendorRequest
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContextTooLongError,
    CredentialsExpiredError,
)
from fengchao_chains.llms.sensenova import ChatSenseNova
from fengchao_chains.settings import load_settings
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.sensenova import (
    TEST_ACCESS_KEY,
    TEST_SECRET_KEY,
    FakeSenseNova,
)
from tests.vendors.checks import Tokens, summed, tuned
from tests.vendors.harness import SENSENOVA, SENSENOVA_API_KEY

SENSENOVA_MODELS = ["SenseChat-5"]
API_KEY = SENSENOVA_API_KEY  # a platform key the served fake accepts


fake, url, model = SENSENOVA.fixtures()


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A spy on JWT minting (it calls through): the claims of every token minted."""
    minted: list[dict[str, Any]] = []
    real = jwt.encode

    def spy(payload: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        minted.append(dict(payload))
        return real(payload, *args, **kwargs)

    monkeypatch.setattr(jwt, "encode", spy)
    sensenova._tokens.clear()
    return minted


def auth_of(fake: FakeSenseNova, n: int = -1) -> str:
    return str(fake.requests[n]["headers"]["authorization"])


# ------------------------------------------------------------------ catalog


def test_the_catalog_lists_exactly_these_sensenova_models() -> None:
    ids = sorted(card.id for card in load_catalog().values() if card.vendor == "sensenova")
    assert ids == sorted(SENSENOVA_MODELS)


def test_catalog_factory_overrides_win(fake: FakeSenseNova, url: str) -> None:
    settings = load_settings(
        sensenova_access_key_id="ak-wrong",
        sensenova_secret_access_key="sk-wrong-0123456789abcdef0123456789",
        sensenova_api_base=url,
    )
    card = load_catalog().get("SenseChat-5")
    assert card is not None
    chat = sensenova.create(
        card, settings, api_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, temperature=0.5
    )
    assert chat.invoke("hi").content == "Echo: hi"
    assert fake.last_request["body"]["temperature"] == 0.5


# ------------------------------------------------------------------ parameters on the wire


def test_payload_maps_standard_and_vendor_parameters(
    model: ChatSenseNova, fake: FakeSenseNova
) -> None:
    tuned_model = tuned(model, repetition_penalty=1.05, model_kwargs={"user": "u1", "n": 1})
    tuned_model.invoke([SystemMessage("be brief"), HumanMessage("hi", name="ann")], stop=["\n\n"])
    body = fake.last_request["body"]
    assert body == {
        "model": "SenseChat-5",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_new_tokens": 50,
        "repetition_penalty": 1.05,
        "user": "u1",
        "n": 1,
        "stream": False,
    }


def test_per_call_kwargs_and_model_override(model: ChatSenseNova, fake: FakeSenseNova) -> None:
    answer = model.invoke("hi", model="SenseChat-32K", max_tokens=7, temperature=1.5)
    body = fake.last_request["body"]
    assert (body["model"], body["max_new_tokens"], body["temperature"]) == ("SenseChat-32K", 7, 1.5)
    assert answer.response_metadata["model_name"] == "SenseChat-32K"
    chunks = list(model.stream("hi", model="SenseChat-32K"))
    assert fake.last_request["body"]["stream"] is True
    assert summed(chunks).response_metadata["model_name"] == "SenseChat-32K"


def test_greedy_settings_are_sent_inside_the_open_ranges(
    model: ChatSenseNova, fake: FakeSenseNova, url: str
) -> None:
    # The API's ranges are temperature (0, 2] and top_p (0, 1): the fake refuses 0 and 1 ...
    raw = httpx.post(
        f"{url}/llm/chat-completions",
        json={"model": "SenseChat-5", "messages": [{"role": "user", "content": "hi"}],
              "temperature": 0},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )  # fmt: skip
    assert raw.status_code == 400
    assert raw.json()["error"]["code"] == 3
    # ... so the model sends the nearest accepted values instead.
    greedy = model.model_copy(update={"temperature": 0.0, "top_p": 1.0})
    assert greedy.invoke("hi").content == "Echo: hi"
    body = fake.last_request["body"]
    assert body["temperature"] == 0.000001
    assert body["top_p"] == 0.999999


def test_stop_sequences_are_applied_client_side(model: ChatSenseNova, fake: FakeSenseNova) -> None:
    stopped = model.invoke("alpha beta gamma", stop=["beta"])
    assert "stop" not in fake.last_request["body"]  # the API has no such field
    assert stopped.content == "Echo: alpha "
    assert stopped.response_metadata["finish_reason"] == "stop"
    # In a stream the stop word spans chunks ("Echo", ":", " alpha", " be"+"ta"): held back.
    chunks = list(model.stream("alpha beta gamma", stop=["a be", "zzz"]))
    total = summed(chunks)
    assert total.content == "Echo: alph"
    assert total.response_metadata["finish_reason"] == "stop"
    assert len([c for c in chunks if c.usage_metadata]) == 1
    # The vendor generated (and bills) the whole answer: usage is the vendor's, not the cut.
    assert total.usage_metadata is not None and total.usage_metadata["output_tokens"] == 5
    bound = model.model_copy(update={"stop": ["gamma"]})
    assert bound.invoke("alpha beta gamma").content == "Echo: alpha beta "


def test_the_fake_speaks_the_documented_wire_format(url: str) -> None:
    body = {"model": "SenseChat-5", "messages": [{"role": "user", "content": "hi there"}]}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    answer = httpx.post(f"{url}/llm/chat-completions", json=body, headers=headers)
    data = answer.json()["data"]
    assert data["choices"][0]["message"] == "Echo: hi there"  # a plain string
    assert data["choices"][0]["role"] == "assistant"
    assert set(data["usage"]) == {
        "prompt_tokens", "knowledge_tokens", "completion_tokens", "total_tokens",
    }  # fmt: skip
    assert answer.headers["x-request-id"] == data["id"]
    with httpx.stream(
        "POST", f"{url}/llm/chat-completions", json={**body, "stream": True}, headers=headers
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-1] == "data:[DONE]"
    assert all(line.startswith("data:{") for line in lines[:-1])  # no space after data:
    completions = [int(line.split('"completion_tokens":')[1].split(",")[0]) for line in lines[:-1]]
    assert completions == sorted(completions) and completions[-1] == 4  # cumulative


# ------------------------------------------------------------------ knowledge bases and plugins


async def test_knowledge_base_results_and_tokens(model: ChatSenseNova, fake: FakeSenseNova) -> None:
    rag = model.model_copy(
        update={
            "model_kwargs": {
                "know_ids": ["kb-1", "kb-2"],
                "knowledge_config": {"control_level": "high", "knowledge_base_result": True},
            }
        }
    )
    answer = await rag.ainvoke("what is x")
    assert fake.last_request["body"]["know_ids"] == ["kb-1", "kb-2"]
    metadata = answer.response_metadata
    results = metadata["knowledge_base_results"]
    assert [r["know_id"] for r in results] == ["kb-1", "kb-2"]
    assert results[0]["results"][0]["result"] == "Passage from kb-1 about what is x"
    knowledge = metadata["knowledge_tokens"]
    assert knowledge == 18  # two passages of 9 fake tokens ("kb-1" is three)
    # input_tokens = prompt (3) + knowledge; total = input + output = the vendor's total
    assert answer.usage_metadata == {
        "input_tokens": 3 + knowledge, "output_tokens": 5, "total_tokens": 8 + knowledge,
    }  # fmt: skip
    chunks = [c async for c in rag.astream("what is x")]
    streamed = summed(chunks)
    assert streamed.response_metadata["knowledge_base_results"] == results
    assert streamed.usage_metadata == answer.usage_metadata


def test_knowledge_is_counted_even_when_results_are_not_returned(model: ChatSenseNova) -> None:
    answer = model.invoke("what is x", know_ids=["kb-1"])
    assert "knowledge_base_results" not in answer.response_metadata
    assert answer.response_metadata["knowledge_tokens"] == 9


def test_web_search_plugin_results_reach_the_metadata(model: ChatSenseNova) -> None:
    plugins = {"web_search": {"search_enable": True, "result_enable": True}}
    answer = model.invoke("news", plugins=plugins)
    search = answer.response_metadata["plugins"]["web_search"]
    assert search["online_search_count"] == 1
    assert search["results"][0]["title"] == "About news"
    injected = {"associated_knowledge": {"content": "x is a cinema", "mode": "concatenate"}}
    plain = model.invoke("news")
    informed = model.invoke("news", plugins=injected)
    assert plain.usage_metadata and informed.usage_metadata
    # injected knowledge counts as prompt tokens, as the document says
    assert informed.usage_metadata["input_tokens"] == plain.usage_metadata["input_tokens"] + 4


# ------------------------------------------------------------------ auth: JWT from AK/SK


def test_jwt_claims_follow_the_sdk(model: ChatSenseNova, fake: FakeSenseNova) -> None:
    sensenova._tokens.clear()
    model.invoke("hi")
    token = auth_of(fake).removeprefix("Bearer ")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token, TEST_SECRET_KEY, algorithms=["HS256"])
    assert claims["iss"] == TEST_ACCESS_KEY
    assert claims["exp"] - claims["nbf"] == 1800 + 5
    assert abs(claims["exp"] - (time.time() + 1800)) < 5  # seconds, not milliseconds


def test_token_is_cached_across_calls_instances_and_threads(
    model: ChatSenseNova, fake: FakeSenseNova, encodes: list[dict[str, Any]]
) -> None:
    request = VendorRequest("POST", "http://unused")
    twin = model.model_copy()
    signed: list[str] = []

    def sign() -> None:
        signed.append(twin._sign(request)["Authorization"])

    threads = [threading.Thread(target=sign) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    model.invoke("a")
    model.invoke("b")
    assert len(encodes) == 1
    assert set(signed) == {auth_of(fake, 0), auth_of(fake, 1)}


async def test_concurrent_async_calls_share_one_token(
    model: ChatSenseNova, fake: FakeSenseNova, encodes: list[dict[str, Any]]
) -> None:
    answers = await asyncio.gather(*(model.ainvoke(f"n{i}") for i in range(20)))
    assert [a.content for a in answers] == [f"Echo: n{i}" for i in range(20)]
    assert len(encodes) == 1
    assert len({r["headers"]["authorization"] for r in fake.requests}) == 1


def test_token_is_minted_again_shortly_before_it_expires(
    model: ChatSenseNova, fake: FakeSenseNova, encodes: list[dict[str, Any]]
) -> None:
    # exp is whole seconds (issued = int(now)); with a 3 s lifetime the token is replaced
    # once 1.5 s or less remain: fresh for at least 0.5 s, stale after at most 1.5 s.
    short = model.model_copy(update={"token_ttl": 3})
    short.invoke("a")
    short.invoke("b")
    assert len(encodes) == 1
    time.sleep(1.6)
    assert short.invoke("c").content == "Echo: c"
    assert len(encodes) == 2
    assert auth_of(fake, 0) != auth_of(fake, 2)


def test_expired_token_is_minted_again_and_retried_once(
    model: ChatSenseNova, fake: FakeSenseNova, encodes: list[dict[str, Any]]
) -> None:
    fake.inject(Fault.TOKEN_EXPIRED)
    assert model.invoke("hi").content == "Echo: hi"
    assert len(fake.requests) == 2
    assert len(encodes) == 2
    fake.inject(Fault.TOKEN_EXPIRED, times=2)
    with pytest.raises(CredentialsExpiredError) as caught:
        model.invoke("hi")
    assert caught.value.status_code == 401
    assert caught.value.code == 16


async def test_expired_token_during_a_stream_open_is_refreshed(
    model: ChatSenseNova, fake: FakeSenseNova, encodes: list[dict[str, Any]]
) -> None:
    fake.inject(Fault.TOKEN_EXPIRED)
    text = "".join([str(c.content) async for c in model.astream("hi")])
    assert text == "Echo: hi"
    assert len(encodes) == 2


def test_the_fake_refuses_bad_tokens(url: str) -> None:
    body = {"model": "SenseChat-5", "messages": [{"role": "user", "content": "hi"}]}
    now = int(time.time())

    def status_of(token: str) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = httpx.post(f"{url}/llm/chat-completions", json=body, headers=headers)
        return answer.status_code, answer.json().get("error", {}).get("message", "")

    def minted(secret: str = TEST_SECRET_KEY, **claims: Any) -> str:
        base = {"iss": TEST_ACCESS_KEY, "exp": now + 60, "nbf": now - 5}
        return jwt.encode({**base, **claims}, secret, algorithm="HS256")

    assert status_of(minted())[0] == 200
    assert status_of(minted(exp=now - 10)) == (401, "unauthenticated: token expired")
    assert status_of(minted(nbf=now + 120))[0] == 401
    assert status_of(minted(secret="sk-wrong-0123456789abcdef0123456789ab"))[0] == 401
    assert status_of(minted(iss="ak-unknown"))[0] == 401
    assert status_of("not-a-jwt")[0] == 401
    assert status_of("")[0] == 401


def test_platform_api_key_is_sent_as_the_bearer(fake: FakeSenseNova, url: str) -> None:
    chat = ChatSenseNova(model="SenseChat-5", api_key=API_KEY, base_url=url)
    assert chat.invoke("hi").content == "Echo: hi"
    assert auth_of(fake) == f"Bearer {API_KEY}"


def test_missing_credentials_name_the_env_var(fake: FakeSenseNova, url: str) -> None:
    chat = ChatSenseNova(model="SenseChat-5", base_url=url)
    with pytest.raises(AuthenticationError, match="SENSENOVA_ACCESS_KEY_ID"):
        chat.invoke("hi")
    assert fake.requests == []


def test_credentials_and_base_come_from_the_environment(
    fake: FakeSenseNova, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENSENOVA_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("SENSENOVA_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("SENSENOVA_API_BASE", url)
    chat = ChatSenseNova(model="SenseChat-5")
    assert chat.invoke("hi").content == "Echo: hi"
    aliased = ChatSenseNova(
        model="SenseChat-5", access_key_id=TEST_ACCESS_KEY, secret_access_key=TEST_SECRET_KEY
    )
    assert aliased.invoke("hi").content == "Echo: hi"


# ------------------------------------------------------------------ errors


def test_input_plus_max_new_tokens_must_fit_the_context(
    model: ChatSenseNova, fake: FakeSenseNova
) -> None:
    fake.context_window = 30
    assert model.invoke("one two three", max_tokens=20).content == "Echo: one two three"
    with pytest.raises(ContextTooLongError) as caught:
        model.invoke("one two three", max_tokens=28)
    assert caught.value.status_code == 400
    with pytest.raises(ContextTooLongError):
        model.invoke("word " * 50, max_tokens=1)


def test_invalid_request_is_not_retried(model: ChatSenseNova, fake: FakeSenseNova) -> None:
    from fengchao_chains.llms.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError) as caught:
        model.invoke([HumanMessage("hi"), AIMessage("hello")])  # must end with the user
    assert caught.value.code == 3
    assert len(fake.requests) == 1


# ------------------------------------------------------------------ LangChain composition


def test_stop_words_are_held_back_from_streamed_tokens(model: ChatSenseNova) -> None:
    handler = Tokens()
    stopped = model.bind(stop=["pong"])
    list(stopped.stream("ping pong", config={"callbacks": [handler]}))
    assert "".join(handler.tokens) == "Echo: ping "
