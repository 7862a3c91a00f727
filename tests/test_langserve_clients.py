"""``langserve.RemoteRunnable`` against a live ``fengchao serve`` (uvicorn, lifespan on).

Every route (/chat, /knowledge, /instruct) through the client's invoke, batch, stream,
astream and astream_events, with the token in ``Authorization`` as the /aigc routes take
it; no token is a 401; and each call leaves a usage line naming the caller in the log.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk
from langserve import RemoteRunnable

from tests.clients import (
    NEWS_STORE,
    ONLINE_MODEL,
    Gateway,
    news_gateway,
)
from tests.processes import wait_until

LONG_QUESTION = (
    "请讲一讲长城的历史：它最早在什么时候开始修建，明朝为什么又要大规模重修，今天还剩多长"
)
"""A long answer, so the stream has many chunks."""
NEWS = [
    {
        "id": "remote-tea",
        "title": "西湖龙井开采",
        "url": "https://news.example/tea",
        "content": "杭州西湖龙井茶3月18日正式开采，今年明前茶产量预计与去年持平，"
        "狮峰、梅家坞等核心产区的茶农开始采摘一芽一叶的嫩芽。",
    },
    {
        "id": "remote-rail",
        "title": "沪渝蓉高铁武宜段开工",
        "url": "https://news.example/rail",
        "content": "沪渝蓉高速铁路武汉至宜昌段全线开工建设，线路设计时速350公里，"
        "建成后武汉至宜昌最快1小时可达。",
    },
]


gateway, plain_echo = news_gateway("remote-gateway", NEWS)


def remote(gateway: Gateway, path: str, token: str | None = "") -> RemoteRunnable[Any, Any]:
    """A client of ``path``; ``token=None`` sends no Authorization header."""
    headers = {} if token is None else {"Authorization": token or gateway.token()}
    return RemoteRunnable(f"{gateway.base_url}{path}", headers=headers, timeout=60)


def ask(query: str, **fields: Any) -> dict[str, Any]:
    return {"query": query, "model": ONLINE_MODEL, **fields}


def from_news(query: str) -> dict[str, Any]:
    """A question for the news store, its best hit whatever the distance (USE scores short
    Chinese questions low, under the default threshold)."""
    return ask(query, knowledge=NEWS_STORE, top_k=1, threshold=0)


# --------------------------------------------------------------------------- /chat -------
def test_chat_invoke_and_batch(gateway: Gateway) -> None:
    chat = remote(gateway, "/chat")
    answer = chat.invoke(ask("你好"))
    assert isinstance(answer, AIMessage)
    assert answer.content == "Echo: 你好"
    answers = chat.batch([ask("第一"), ask("第二"), ask("第三")])
    assert [a.content for a in answers] == ["Echo: 第一", "Echo: 第二", "Echo: 第三"]


def test_chat_stream_and_astream(gateway: Gateway) -> None:
    chat = remote(gateway, "/chat")
    chunks = list(chat.stream(ask(LONG_QUESTION)))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert len([c for c in chunks if c.content]) > 10  # streamed, not one whole answer
    assert "".join(str(c.content) for c in chunks) == f"Echo: {LONG_QUESTION}"

    async def collect() -> list[Any]:
        return [chunk async for chunk in chat.astream(ask("异步流式"))]

    achunks = asyncio.run(collect())
    assert "".join(str(c.content) for c in achunks) == "Echo: 异步流式"


def test_chat_astream_events_show_the_model_streaming(gateway: Gateway) -> None:
    chat = remote(gateway, "/chat")

    async def collect() -> list[Any]:
        return [event async for event in chat.astream_events(ask("事件流"), version="v2")]

    events = asyncio.run(collect())
    kinds = [event["event"] for event in events]
    assert "on_chat_model_start" in kinds
    streamed = [e["data"]["chunk"] for e in events if e["event"] == "on_chat_model_stream"]
    assert "".join(str(chunk.content) for chunk in streamed) == "Echo: 事件流"
    assert kinds[-1] == "on_chain_end"
    assert events[-1]["data"]["output"].content == "Echo: 事件流"


def test_the_model_and_sampling_are_chosen_per_request(gateway: Gateway) -> None:
    chat = remote(gateway, "/chat")
    answer = chat.invoke(ask("一二三四五六七八九十", max_tokens=4, temperature=0.1))
    assert answer.content == "Echo: 一二"  # 4 tokens as the fake counts: Echo, :, 一, 二
    sent = gateway.openai.last_request["body"]
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == (ONLINE_MODEL, 4, 0.1)


# --------------------------------------------------------------------------- /knowledge --
def test_knowledge_invoke_and_stream_return_documents(gateway: Gateway) -> None:
    knowledge = remote(gateway, "/knowledge")
    output = knowledge.invoke(from_news("西湖龙井什么时候开采？"))
    documents = output["documents"]
    assert [doc.metadata["title"] for doc in documents] == ["西湖龙井开采"]
    assert all(isinstance(doc, Document) for doc in documents)
    assert "狮峰" in documents[0].page_content
    assert "狮峰" in output["answer"].content  # the hit was put before the question

    chunks = list(knowledge.stream(from_news("武汉到宜昌的高铁")))
    assert "documents" in chunks[0]  # the hits come first, before any answer text
    titles = [doc.metadata["title"] for c in chunks for doc in c.get("documents", [])]
    assert titles == ["沪渝蓉高铁武宜段开工"]
    text = "".join(str(c["answer"].content) for c in chunks if "answer" in c)
    assert "时速350公里" in text


def test_knowledge_astream_events(gateway: Gateway) -> None:
    knowledge = remote(gateway, "/knowledge")

    async def collect() -> list[Any]:
        query = from_news("西湖龙井")
        return [event async for event in knowledge.astream_events(query, version="v2")]

    events = asyncio.run(collect())
    final = events[-1]
    assert final["event"] == "on_chain_end"
    assert [d.metadata["title"] for d in final["data"]["output"]["documents"]] == ["西湖龙井开采"]
    streamed = [e["data"]["chunk"] for e in events if e["event"] == "on_chat_model_stream"]
    assert "狮峰" in "".join(str(chunk.content) for chunk in streamed)


# --------------------------------------------------------------------------- /instruct ---
def test_instruct_applies_the_library_instruction(gateway: Gateway) -> None:
    instruct = remote(gateway, "/instruct")
    answer = instruct.invoke({"prompt": "中译英", "query": "今天天气很好", "model": ONLINE_MODEL})
    assert isinstance(answer, AIMessage)
    assert "今天天气很好" in str(answer.content)
    assert "翻译成英文" in str(answer.content)  # the instruction's template wrapped the query
    messages = gateway.openai.last_request["body"]["messages"]
    assert messages[0]["role"] == "system"
    assert "中译英译者" in messages[0]["content"]
    chunks = list(instruct.stream({"prompt": "中译英", "query": "你好", "model": ONLINE_MODEL}))
    assert "你好" in "".join(str(c.content) for c in chunks)
    answers = instruct.batch(
        [{"prompt": "中译英", "query": q, "model": ONLINE_MODEL} for q in ("一", "二")]
    )
    assert ["一" in str(answers[0].content), "二" in str(answers[1].content)] == [True, True]

    async def collect() -> list[Any]:
        question = {"prompt": "中译英", "query": "异步", "model": ONLINE_MODEL}
        return [chunk async for chunk in instruct.astream(question)]

    assert "异步" in "".join(str(c.content) for c in asyncio.run(collect()))


# --------------------------------------------------------------------------- auth, usage -
@pytest.mark.parametrize("path", ["/chat", "/knowledge", "/instruct"])
def test_no_token_is_401(gateway: Gateway, path: str) -> None:
    gateway.openai.requests.clear()
    unauthenticated = remote(gateway, path, token=None)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        unauthenticated.invoke(ask("你好", prompt="中译英"))
    assert refused.value.response.status_code == 401
    with pytest.raises(httpx.HTTPStatusError) as refused_stream:
        list(unauthenticated.stream(ask("你好", prompt="中译英")))
    assert refused_stream.value.response.status_code == 401
    forged = remote(gateway, path, token="eyJhbGciOiJub25lIn0.eyJhcGlfa2V5IjoieCJ9.")
    with pytest.raises(httpx.HTTPStatusError) as forged_refused:
        forged.invoke(ask("你好", prompt="中译英"))
    assert forged_refused.value.response.status_code == 401
    assert gateway.openai.requests == []


def test_each_call_logs_usage_for_the_authenticated_caller(gateway: Gateway) -> None:
    mark = len(gateway.server.lines)
    chat = remote(gateway, "/chat")
    chat.invoke(ask("记账"))
    # a client cannot pass itself off as another caller through the config
    chat.invoke(ask("冒名"), config={"configurable": {"fengchao_caller": "someone-else"}})
    list(chat.stream(ask("流式记账")))
    usage = re.compile(
        rf"usage caller={re.escape(gateway.api_key)} model={re.escape(ONLINE_MODEL)}"
        r" door=langserve status=ok prompt_tokens=(\d+) completion_tokens=(\d+)"
        r" cost=([\d.]+) [A-Z]{3}"
    )

    def logged() -> list[tuple[str, ...]]:
        return usage.findall(gateway.log_since(mark))

    assert wait_until(lambda: len(logged()) >= 3, timeout=10), gateway.log_since(mark)
    assert "someone-else" not in gateway.log_since(mark)
    for prompt_tokens, completion_tokens, cost in logged():
        assert int(prompt_tokens) > 0 and int(completion_tokens) > 0 and float(cost) > 0
