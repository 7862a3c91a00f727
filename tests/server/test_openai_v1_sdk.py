"""The official ``openai`` SDK and LangChain's ``ChatOpenAI`` / ``OpenAIEmbeddings``,
unchanged, against a live ``fengchao serve`` (real HTTP), with the key pair
``<api_key>:<secret_key>`` as their fixed ``api_key``; a fake OpenAI answers behind it."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from fengchao_chains.testing.fakes._common import Fault
from tests.clients import (
    FAST_EMBEDDINGS,
    NEWS_STORE,
    ONLINE_MODEL,
    Gateway,
    news_gateway,
)

NEWS = [
    {
        "id": "sdk-tea",
        "title": "西湖龙井开采",
        "url": "https://news.example/tea",
        "content": "杭州西湖龙井茶3月18日正式开采，今年明前茶产量预计与去年持平。",
    },
    {
        "id": "sdk-rail",
        "title": "沪渝蓉高铁武宜段开工",
        "url": "https://news.example/rail",
        "content": "沪渝蓉高速铁路武汉至宜昌段全线开工建设，线路设计时速350公里。",
    },
]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


gateway, plain_echo = news_gateway("v1-gateway", NEWS)


def key_pair(gateway: Gateway) -> str:
    return f"{gateway.api_key}:{gateway.secret_key}"


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=key_pair(gateway), max_retries=0
    )


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# --- the openai SDK ----------------------------------------------------------------------


def test_chat_completion(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=ONLINE_MODEL, messages=ask("你好"))
    assert answer.id.startswith("chatcmpl-") and answer.model == ONLINE_MODEL
    assert answer.choices[0].message.content == "Echo: 你好"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 4)


def test_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=ONLINE_MODEL,
            messages=ask("streams are fun"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: streams are fun"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 3 + 5
    assert all(c.usage is None for c in chunks[:-1])


def test_json_mode(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=ONLINE_MODEL, messages=ask("json please"), response_format={"type": "json_object"}
    )
    assert json.loads(answer.choices[0].message.content or "") == {"answer": "Echo: json please"}


def test_tool_call_round_trip(client: openai.OpenAI) -> None:
    messages: list[Any] = ask("Paris")
    first = client.chat.completions.create(model=ONLINE_MODEL, messages=messages, tools=[WEATHER])
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls
    call = message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    final = client.chat.completions.create(model=ONLINE_MODEL, messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == "Echo: sunny"


def test_streamed_tool_call_deltas_accumulate(client: openai.OpenAI) -> None:
    """The SDK's own stream helper rebuilds the call from the deltas."""
    with client.chat.completions.stream(
        model=ONLINE_MODEL, messages=ask("Hangzhou West Lake"), tools=[WEATHER]
    ) as events:
        final = events.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Hangzhou West Lake"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_models_and_embeddings(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ONLINE_MODEL in ids and FAST_EMBEDDINGS in ids
    assert client.models.retrieve(ONLINE_MODEL).owned_by == "Openai"
    texts = ["西湖龙井", "高铁开工"]
    packed = client.embeddings.create(model=FAST_EMBEDDINGS, input=texts)  # the SDK asks base64
    floats = client.embeddings.create(model=FAST_EMBEDDINGS, input=texts, encoding_format="float")
    assert [len(item.embedding) for item in packed.data] == [512, 512]
    for a, b in zip(packed.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert packed.usage.prompt_tokens == 8


def test_knowledge_extras(client: openai.OpenAI, gateway: Gateway) -> None:
    answer = client.chat.completions.create(
        model=ONLINE_MODEL,
        messages=ask("西湖龙井什么时候开采"),
        extra_body={"knowledge": NEWS_STORE, "top_k": 1, "threshold": 0},
    )
    hits = (answer.model_extra or {})["knowledge"]
    assert [hit["title"] for hit in hits] == ["西湖龙井开采"]
    prompt = gateway.openai.last_request["body"]["messages"][-1]["content"]
    assert "3月18日" in prompt


def test_errors_are_the_sdk_exceptions(client: openai.OpenAI, gateway: Gateway) -> None:
    wrong = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=ONLINE_MODEL, messages=ask("x"))
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-5-turbo", messages=ask("x"))
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=ONLINE_MODEL, messages=ask("x"), n=2)
    assert bad.value.param == "n"
    gateway.openai.inject(Fault.RATE_LIMITED, times=3, retry_after=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=ONLINE_MODEL, messages=ask("x"))


def test_a_stream_failing_midway_raises_in_the_sdk(client: openai.OpenAI, gateway: Gateway) -> None:
    gateway.openai.reply = lambda text: "one two three four five"
    gateway.openai.inject(Fault.MID_STREAM_ERROR, after_chunks=2)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model=ONLINE_MODEL, messages=ask("x"), stream=True, extra_body={"is_sensitive": False}
        ):
            received += [c.delta.content or "" for c in chunk.choices]
    assert "".join(received) == "one two"


# --- LangChain ---------------------------------------------------------------------------


@pytest.fixture
def chat(gateway: Gateway) -> ChatOpenAI:
    return ChatOpenAI(
        model=ONLINE_MODEL,
        base_url=f"{gateway.base_url}/v1",
        api_key=key_pair(gateway),
        max_retries=0,
        stream_usage=True,
    )


def test_chat_openai_invoke_and_stream(chat: ChatOpenAI) -> None:
    answer = chat.invoke("hello gateway")
    assert answer.content == "Echo: hello gateway"
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 4
    total: Any = None
    for chunk in chat.stream("hello stream"):
        total = chunk if total is None else total + chunk
    assert total.content == "Echo: hello stream"
    assert total.usage_metadata["total_tokens"] == 2 + 4


def test_chat_openai_tools_round_trip(chat: ChatOpenAI) -> None:
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    with_tools = chat.bind_tools([get_weather])
    question = HumanMessage("Lhasa")
    asked = with_tools.invoke([question])
    assert isinstance(asked, AIMessage)
    (call,) = asked.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Lhasa"}
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage)
    final = with_tools.invoke([question, asked, result])
    assert final.content == "Echo: sunny in Lhasa"
    streamed: Any = None
    for chunk in with_tools.stream([question]):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls[0]["args"] == {"city": "Lhasa"}


class Verdict(BaseModel):
    """A verdict on a claim."""

    claim: str
    score: int


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_chat_openai_structured_output(chat: ChatOpenAI, method: str) -> None:
    structured = chat.with_structured_output(Verdict, method=method)  # type: ignore[arg-type]
    assert structured.invoke("tea is good 7") == Verdict(claim="tea is good 7", score=7)


def test_openai_embeddings(gateway: Gateway, client: openai.OpenAI) -> None:
    embeddings = OpenAIEmbeddings(  # type: ignore[call-arg]  # pydantic aliases
        model=FAST_EMBEDDINGS,
        base_url=f"{gateway.base_url}/v1",
        api_key=key_pair(gateway),
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    documents = embeddings.embed_documents(["西湖龙井", "高铁开工"])
    query = embeddings.embed_query("西湖龙井")
    assert len(documents) == 2 and len(query) == 512
    assert query == pytest.approx(documents[0], abs=1e-6)
